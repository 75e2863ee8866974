#!/usr/bin/env bash
# Builds llorch's CPU container image without a container daemon or registry:
# the Dockerfile's run stage, made from Debian packages.
#
#   scripts/build-image.sh [--binary PATH] [--rootfs DIR] [--reuse-rootfs] [-o llorch-image.oci.tar]
#
# 1. mmdebstrap makes a minimal Debian 12 root file system with the runtime
#    libraries the Dockerfile's run stage installs (from this machine's apt
#    sources: no other network access is needed);
# 2. the llorch binary (default: build-release/llorch, built here if missing)
#    goes to /usr/local/bin, a non-root user `llorch` (uid 10001) and /models
#    are added, as in the Dockerfile;
# 3. the tree is packed as one layer of an OCI image archive with the same
#    entrypoint, user, environment, exposed port and volume as the Dockerfile,
#    which `podman load -i` and `docker load -i` accept.
# The root file system stays in --rootfs (default build-image/rootfs) so that
# tests can run it without a container runtime (tests/integration/deploy).
# --reuse-rootfs keeps a root file system that this same script made (its
# hash is in DIR.base) and only installs the binary and packs again.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=build-release/llorch
rootfs=build-image/rootfs
out=build-image/llorch-image.oci.tar
reuse=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bin=$2; shift 2 ;;
    --rootfs) rootfs=$2; shift 2 ;;
    -o) out=$2; shift 2 ;;
    --reuse-rootfs) reuse=1; shift ;;
    *) echo "build-image.sh: unknown option '$1' (expected --binary PATH, --rootfs DIR, --reuse-rootfs, -o FILE)" >&2; exit 2 ;;
  esac
done

need() { command -v "$1" >/dev/null || { echo "build-image.sh: '$1' is missing: $2" >&2; exit 1; }; }
if ! command -v mmdebstrap >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null
fi
need mmdebstrap "apt-get install mmdebstrap"
need sha256sum "coreutils"
need python3 "apt-get install python3"

if [ ! -x "$bin" ]; then
  cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DLLORCH_BUILD_TESTS=OFF -DLLORCH_CUDA=OFF >/dev/null
  cmake --build build-release -j"$(nproc)" --target llorch
  bin=build-release/llorch
fi

# The same runtime packages as the Dockerfile's run stage.
packages=libuv1,libcjson1,libyaml-0-2,libpcre2-8-0,curl,ca-certificates
base_hash=$(sha256sum "$0" | cut -d' ' -f1)
mkdir -p "$(dirname "$rootfs")" "$(dirname "$out")"
if [ "$reuse" = 1 ] && [ -d "$rootfs/usr" ] && [ "$(cat "$rootfs.base" 2>/dev/null)" = "$base_hash" ]; then
  echo "build-image.sh: reusing the root file system in $rootfs"
else
sources=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -v '^#' || true)
rm -rf "$rootfs" "$rootfs.base"
# --mode=root: we run as root here (CI and developers' machines); the tree is a plain directory.
echo "$sources" | mmdebstrap --quiet --mode=root --variant=minbase --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/{doc,man,locale}/*' \
  --customize-hook='chroot "$1" useradd --system --uid 10001 --home-dir /var/lib/llorch --create-home llorch' \
  --customize-hook='mkdir -p "$1/models" "$1/etc/llorch" && chroot "$1" chown llorch /models' \
  --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/cache/apt/"*' \
  bookworm "$rootfs" -
echo "$base_hash" > "$rootfs.base"
fi
rm -rf "$rootfs/etc/llorch/examples"
install -m 0755 "$bin" "$rootfs/usr/local/bin/llorch"
cp -r config "$rootfs/etc/llorch/examples"

# ---- OCI image archive: oci-layout, index.json, blobs/sha256/{layer,config,manifest} ----
work=$(mktemp -d "$(dirname "$out")/.oci.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"
tar --numeric-owner --sort=name -C "$rootfs" -cf - . | gzip -n > "$work/layer.tar.gz"
diff_id=$(gzip -dc "$work/layer.tar.gz" | sha256sum | cut -d' ' -f1)
python3 - "$work" "$diff_id" <<'EOF'
import hashlib, json, os, sys
work, diff_id = sys.argv[1], sys.argv[2]
def blob(data, media):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(work, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"mediaType": media, "digest": "sha256:" + digest, "size": len(data)}
layer_data = open(os.path.join(work, "layer.tar.gz"), "rb").read()
os.remove(os.path.join(work, "layer.tar.gz"))
layer = blob(layer_data, "application/vnd.oci.image.layer.v1.tar+gzip")
config = {
    "architecture": "amd64", "os": "linux",
    "config": {
        "User": "llorch",
        "Entrypoint": ["llorch"], "Cmd": ["--help"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LLORCH_LISTEN=0.0.0.0:8080", "LLORCH_POOL_MODEL_DIRS=/models"],
        "ExposedPorts": {"8080/tcp": {}},
        "Volumes": {"/models": {}},
        "StopSignal": "SIGTERM",
        "Labels": {"org.opencontainers.image.title": "llorch"},
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
}
cfg = blob(json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg, "layers": [layer]}
man = blob(json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
man["annotations"] = {"org.opencontainers.image.ref.name": "llorch:latest",
                      "io.containerd.image.name": "docker.io/library/llorch:latest"}
json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
           "manifests": [man]}, open(os.path.join(work, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(work, "oci-layout"), "w"))
EOF
tar -C "$work" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
echo "build-image.sh: $out ($(du -h "$out" | cut -f1)), root file system in $rootfs"
