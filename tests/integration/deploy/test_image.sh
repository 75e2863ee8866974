#!/usr/bin/env bash
# Proves the container image (scripts/build-image.sh) serves: builds it (root
# file system + OCI archive, cached in the build directory), checks the
# archive's OCI layout, then runs the image's root file system as a container
# runtime would (no runtime works on our machines: podman fails on cgroups and
# rlimits) - its own mount, PID and network namespaces (unshare), chroot, the
# image's non-root user, its entrypoint - and serves a chat completion through
# it: `llorch synth` makes a model in the /models volume, `llorch --role=all`
# serves it on the namespace's loopback, the image's curl asks. SIGTERM must
# drain and exit 0, as on bare metal.
#   test_image.sh LLORCH_BIN REPO IMAGE_DIR
set -euo pipefail
bin=$1 repo=$2 dir=$3
rootfs=$dir/rootfs archive=$dir/llorch-image.oci.tar

if [ "$(id -u)" -ne 0 ]; then
  echo "FAIL: building and running the image's root file system needs root (mmdebstrap, unshare, chroot)"
  exit 1
fi
# The root file system is built once per version of build-image.sh (Debian
# packages, minutes); each run installs the binary into it and packs again.
"$repo/scripts/build-image.sh" --binary "$bin" --rootfs "$rootfs" --reuse-rootfs -o "$archive"

fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

# ---- the archive is an OCI image layout with the Dockerfile's settings ----
python3 - "$archive" <<'PY' || fail=1
import hashlib, json, sys, tarfile
t = tarfile.open(sys.argv[1])
names = set(t.getnames())
def read(n): return t.extractfile(n).read()
assert json.loads(read("oci-layout"))["imageLayoutVersion"] == "1.0.0"
index = json.loads(read("index.json"))
m = index["manifests"][0]
def blob(d):
    data = read("blobs/sha256/" + d["digest"].split(":")[1])
    assert hashlib.sha256(data).hexdigest() == d["digest"].split(":")[1] and len(data) == d["size"], d
    return data
manifest = json.loads(blob(m))
config = json.loads(blob(manifest["config"]))
for layer in manifest["layers"]:
    blob(layer)
c = config["config"]
assert c["Entrypoint"] == ["llorch"] and c["User"] == "llorch", c
assert "8080/tcp" in c["ExposedPorts"] and "/models" in c["Volumes"], c
print("ok   OCI archive: layout, digests and sizes, entrypoint llorch, user llorch, port 8080, volume /models")
PY

# ---- run it: own mount/pid/net namespaces, chroot, the image's user ----
models=$(mktemp -d /tmp/llorch-image-models.XXXXXX)
trap 'rm -rf "$models"' EXIT
cat > "$models/test-all.yaml" <<'YAML'
shutdown_grace: 10s
pool:
  model_dirs: [/models]
orchestrator:
  api_keys: [client-key]
  models:
    - {name: tiny, file: tiny.gguf, slots: 2, ctx: 256}
YAML
out=$(unshare --mount --pid --net --fork --kill-child bash -s "$rootfs" "$models" <<'INNER' 2>&1
set -eu
root=$1 models=$2
ip link set lo up
mount --bind "$models" "$root/models"
chown 10001 "$root/models"
mount -t proc proc "$root/proc"
# chroot execs env, env execs the command: no shell in between to eat SIGTERM
run() { exec chroot --userspec=10001:10001 "$root" env -i HOME=/var/lib/llorch \
          PATH=/usr/local/bin:/usr/bin:/bin LLORCH_LISTEN=0.0.0.0:8080 LLORCH_POOL_MODEL_DIRS=/models "$@"; }
(run llorch synth --arch qwen2 --layers 1 --embd 64 --ff 128 --heads 2 --kv-heads 1 --seed 3 -o /models/tiny.gguf)
# The image's LLORCH_LISTEN is 0.0.0.0:8080 (a container must be reachable, and
# then a cluster token is required); the namespace's loopback is enough here,
# and a flag beats the environment.
(run llorch --role=all --listen 127.0.0.1:8080 --config /models/test-all.yaml) > "$models/server.log" 2>&1 &
server=$!
for i in $(seq 1 100); do
  (run curl -fsS http://127.0.0.1:8080/health/live) >/dev/null 2>&1 && break
  sleep 0.2
done
(run curl -sS --max-time 60 http://127.0.0.1:8080/v1/chat/completions -H 'Authorization: Bearer client-key' \
  -H 'Content-Type: application/json' \
  -d '{"model":"tiny","messages":[{"role":"user","content":"Hello"}],"max_tokens":8}')
echo
echo "whoami=$(run id -un)"
kill -TERM $server
wait $server && echo "exit=0" || echo "exit=$?"
umount "$root/proc" "$root/models"
INNER
) || true
echo "$out" | tail -5
check "chat completion served from the image's root file system" \
  'echo "$out" | grep -q "\"object\":\"chat.completion\""'
check "it ran as the image's non-root user" 'echo "$out" | grep -q "whoami=llorch"'
check "SIGTERM drained and exited 0" 'echo "$out" | grep -q "exit=0"'
[ $fail -eq 0 ] || { echo "--- server log ---"; tail -30 "$models/server.log" 2>/dev/null; }
[ $fail -eq 0 ] && echo "image test: passed (ran the root file system with unshare + chroot; no container runtime used)"
exit $fail
