/*
 * Model files shared between pools (docs/cluster-protocol.md, "Model files").
 *
 * Source side: GET /v2/files/{file}/sha256 hashes a model file once, on the
 * libuv threadpool (a 40 GB file takes minutes; the loop must keep serving),
 * and caches the digest by path, size and mtime; GET /v2/files/{file} sends
 * it, from a byte offset with `Range: bytes=N-`, read with uv_fs_read and
 * paced by what the client has taken.
 *
 * Target side: POST /v2/files/fetch copies a file from the URL the
 * orchestrator names into "<first model_dir>/.llorch-fetch-<file>.part"
 * (hidden and not ending in .gguf, so the directory scan never reports it),
 * writing with uv_fs_write while the HTTP call is paused, bounded by
 * pool.fetch_bandwidth. When every byte is in, the part is fsynced and
 * hashed on the threadpool; only a digest equal to the one the orchestrator
 * passed makes it visible by rename(). A copy that fails verification or is
 * cancelled deletes its part; one whose source went away keeps it until the
 * orchestrator resumes it (the same file, digest and size: the next request
 * asks for `Range: bytes=<part size>-`) or cancels it. The pool decides
 * nothing: it reports each copy's state in its state document.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "llorch/log.h"
#include "llorch/sha256.h"
#include "pool-impl.h"

#define FILES_CHUNK (256 * 1024)          /* bytes per read when sending */
/* Bytes queued to a client before reading more. The server has no "written"
 * callback, so a full queue is polled every FILES_SEND_POLL_MS: 8 MiB per 2 ms
 * bounds a sender at about 4 GB/s, above what a pool's disk or NIC gives. */
#define FILES_SEND_QUEUE (8 * 1024 * 1024)
#define FILES_SEND_POLL_MS 2
#define FILES_WRITE_HIGH (4 * 1024 * 1024) /* bytes waiting for the disk before pausing the source */
#define FILES_MAX_FETCHES 16              /* copies remembered (running or finished) */

/* ---- hashing on the threadpool ---- */


static void files_hash_run(uv_work_t *w) {
  pool_hash_job *j = w->data;
  int fd = open(j->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    j->err = -errno;
    return;
  }
  if (j->sync_first && fsync(fd) != 0) {
    j->err = -errno;
    close(fd);
    return;
  }
  /* Heap, not a static __thread array: a TLS block of the executable is
   * allocated (and zeroed, so resident) in every thread of every role. */
  enum { SHA_READ_BYTES = 1 << 20 };
  unsigned char *buf = malloc(SHA_READ_BYTES);
  if (buf == NULL) {
    j->err = -ENOMEM;
    close(fd);
    return;
  }
  llorch_sha256 c;
  llorch_sha256_init(&c);
  for (;;) {
    ssize_t n = read(fd, buf, SHA_READ_BYTES);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      j->err = -errno;
      free(buf);
      close(fd);
      return;
    }
    if (n == 0) break;
    llorch_sha256_update(&c, buf, (size_t)n);
    j->bytes += (uint64_t)n;
  }
  free(buf);
  close(fd);
  uint8_t d[LLORCH_SHA256_BYTES];
  llorch_sha256_final(&c, d);
  llorch_sha256_hex(d, j->hex);
}

/* ---- the digest cache ---- */

typedef struct files_waiter {
  struct files_waiter *next;
  struct files_sha *entry;
  llorch_http_request *req;
} files_waiter;

typedef struct files_sha {
  struct files_sha *next;
  pool *p;
  char path[4400];
  uint64_t size;
  int64_t mtime_ns;
  char hex[LLORCH_SHA256_HEX]; /* "" while computing */
  bool computing;
  pool_hash_job job;
  files_waiter *waiters;       /* requests answered when the digest is known */
} files_sha;

static int64_t files_mtime_ns(const struct stat *st) {
  return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* Remembers a digest we know without hashing (a verified copy). */
static void files_sha_remember(pool *p, const char *path, const char *hex) {
  struct stat st;
  if (stat(path, &st) != 0) return;
  files_sha *e = calloc(1, sizeof *e);
  if (!e) return; /* only a cache: the digest is computed when asked */
  e->p = p;
  snprintf(e->path, sizeof e->path, "%s", path);
  e->size = (uint64_t)st.st_size;
  e->mtime_ns = files_mtime_ns(&st);
  snprintf(e->hex, sizeof e->hex, "%s", hex);
  e->next = p->shas;
  p->shas = e;
}

static void files_sha_answer(llorch_http_request *req, const char *file, const files_sha *e) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"file\":");
  llorch_jbuf_str(&b, file);
  llorch_jbuf_cstr(&b, ",\"size\":");
  llorch_jbuf_int(&b, (int64_t)e->size);
  llorch_jbuf_cstr(&b, ",\"sha256\":");
  llorch_jbuf_str(&b, e->hex);
  llorch_jbuf_cstr(&b, "}");
  if (llorch_jbuf_error(&b))
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
  else
    llorch_http_respond_json(req, 200, b.data);
  llorch_jbuf_free(&b);
}

static void files_waiter_gone(llorch_http_request *req, void *data) {
  (void)req;
  files_waiter *w = data;
  for (files_waiter **pp = &w->entry->waiters; *pp; pp = &(*pp)->next)
    if (*pp == w) {
      *pp = w->next;
      break;
    }
  free(w);
}

static void files_sha_after(uv_work_t *wk, int status) {
  pool_hash_job *j = wk->data;
  files_sha *entry = (files_sha *)((char *)j - offsetof(files_sha, job));
  entry->computing = false;
  if (status == 0 && j->err == 0) snprintf(entry->hex, sizeof entry->hex, "%s", j->hex);
  files_waiter *w = entry->waiters;
  entry->waiters = NULL;
  while (w) {
    files_waiter *next = w->next;
    llorch_http_request_set_data(w->req, NULL, NULL);
    const char *file = strrchr(entry->path, '/');
    file = file ? file + 1 : entry->path;
    if (entry->hex[0]) {
      files_sha_answer(w->req, file, entry);
    } else {
      char msg[4600];
      snprintf(msg, sizeof msg, "cannot read %s: %s", entry->path,
               status ? uv_strerror(status) : strerror(-j->err));
      llorch_http_respond_error(w->req, 500, "server_error", msg, "file", "FILE_UNREADABLE");
    }
    free(w);
    w = next;
  }
  if (!entry->hex[0]) { /* a failed hash is not cached: unlink it */
    for (files_sha **pp = &entry->p->shas; *pp; pp = &(*pp)->next)
      if (*pp == entry) {
        *pp = entry->next;
        break;
      }
    free(entry);
  }
}

/* ---- names and paths ---- */

/*
 * Finds file in the model directories as a regular file that really lies in
 * that directory: a symbolic link is followed only when its target is inside
 * the same directory, so a link cannot hand out /etc/shadow. Returns 0 with
 * the path and its stat, LLORCH_ENOENT, or LLORCH_EAUTH (a link leading out)
 * with em.
 */
static int files_locate(pool *p, const char *file, char *path, size_t size, struct stat *st,
                        llorch_errmsg *em) {
  const llorch_strlist *dirs = &p->cfg->pool.model_dirs;
  for (size_t i = 0; i < dirs->count; i++) {
    char cand[4096];
    if ((size_t)snprintf(cand, sizeof cand, "%s/%s", dirs->items[i], file) >= sizeof cand) continue;
    struct stat lst;
    if (lstat(cand, &lst) != 0) continue;
    char real_dir[PATH_MAX], real_file[PATH_MAX];
    if (!realpath(dirs->items[i], real_dir) || !realpath(cand, real_file)) continue;
    size_t dl = strlen(real_dir);
    if (strncmp(real_file, real_dir, dl) != 0 || real_file[dl] != '/' || strchr(real_file + dl + 1, '/'))
      return llorch_errmsg_set(em, LLORCH_EAUTH,
                               "'%s' is a link that leads outside its model directory %s", file,
                               dirs->items[i]);
    if (stat(real_file, st) != 0 || !S_ISREG(st->st_mode)) continue;
    if ((size_t)snprintf(path, size, "%s", real_file) >= size) continue;
    return 0;
  }
  return llorch_errmsg_set(em, LLORCH_ENOENT, "no model file '%s' on this pool", file);
}

static void files_respond_locate_error(llorch_http_request *req, int rc, const llorch_errmsg *em) {
  if (rc == LLORCH_EAUTH)
    llorch_http_respond_error(req, 403, "invalid_request_error", em->text, "file", "FILE_OUTSIDE");
  else
    llorch_http_respond_error(req, 404, "invalid_request_error", em->text, "file", "FILE_NOT_FOUND");
}

/* ---- GET /v2/files/{file}/sha256 ---- */

static void files_on_sha256(pool *p, llorch_http_request *req, const char *file) {
  char path[4096];
  struct stat st;
  llorch_errmsg em = {{0}};
  int rc = files_locate(p, file, path, sizeof path, &st, &em);
  if (rc < 0) {
    files_respond_locate_error(req, rc, &em);
    return;
  }
  files_sha *e = NULL;
  for (files_sha **pp = &p->shas; *pp; pp = &(*pp)->next) {
    files_sha *c = *pp;
    if (strcmp(c->path, path) != 0) continue;
    if (c->computing || (c->size == (uint64_t)st.st_size && c->mtime_ns == files_mtime_ns(&st))) {
      e = c;
      break;
    }
    /* The file changed since it was hashed: the old digest is worthless. */
    *pp = c->next;
    free(c);
    break;
  }
  if (e && e->hex[0]) {
    files_sha_answer(req, file, e);
    return;
  }
  files_waiter *w = calloc(1, sizeof *w);
  if (!e) {
    e = calloc(1, sizeof *e);
    if (!e || !w) {
      free(e);
      free(w);
      llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
      return;
    }
    e->p = p;
    snprintf(e->path, sizeof e->path, "%s", path);
    e->size = (uint64_t)st.st_size;
    e->mtime_ns = files_mtime_ns(&st);
    snprintf(e->job.path, sizeof e->job.path, "%s", path);
    e->job.work.data = &e->job;
    if ((rc = uv_queue_work(p->loop, &e->job.work, files_hash_run, files_sha_after)) < 0) {
      free(e);
      free(w);
      llorch_http_respond_error(req, 500, "server_error", uv_strerror(rc), NULL, "internal_error");
      return;
    }
    e->computing = true;
    e->next = p->shas;
    p->shas = e;
    LOG_INFO("pool", llorch_http_request_id(req), "hashing %s (%" PRIu64 " bytes) for a copy", path, e->size);
  } else if (!w) {
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
    return;
  }
  w->entry = e;
  w->req = req;
  w->next = e->waiters;
  e->waiters = w;
  llorch_http_request_set_data(req, w, files_waiter_gone);
}

/* ---- GET /v2/files/{file} ---- */

typedef struct files_send {
  pool *p;
  llorch_http_request *req;   /* NULL once the client went away */
  int fd;
  uint64_t off, end;          /* next byte to send, file size */
  int64_t corrupt_at;         /* test hook: the offset whose byte is flipped, -1 none */
  uv_fs_t fs;
  uv_timer_t wait;            /* the client has not taken what was sent yet */
  bool reading;               /* fs in flight */
  bool closing;
  char buf[FILES_CHUNK];
} files_send;

static void files_send_pump(files_send *s);

static void files_send_closed(uv_handle_t *h) { free(h->data); }

static void files_send_free(files_send *s) {
  if (s->closing) return;
  s->closing = true;
  if (s->fd >= 0) close(s->fd);
  uv_close((uv_handle_t *)&s->wait, files_send_closed);
}

static void files_send_gone(llorch_http_request *req, void *data) {
  (void)req;
  files_send *s = data;
  s->req = NULL;
  if (!s->reading) files_send_free(s);
}

static void files_send_finish(files_send *s) {
  llorch_http_request_set_data(s->req, NULL, NULL);
  llorch_http_response_end(s->req);
  s->req = NULL;
  files_send_free(s);
}

static void files_send_on_read(uv_fs_t *fs) {
  files_send *s = fs->data;
  ssize_t n = fs->result;
  uv_fs_req_cleanup(fs);
  s->reading = false;
  if (!s->req) {
    files_send_free(s);
    return;
  }
  if (n <= 0) {
    /* The file shrank or cannot be read: end short. The receiver counts the
     * bytes against the size it was promised and never keeps a short copy. */
    LOG_WARN("pool", NULL, "sending a model file: read at %" PRIu64 " returned %s", s->off,
             n < 0 ? uv_strerror((int)n) : "end of file");
    files_send_finish(s);
    return;
  }
  if (s->corrupt_at >= 0 && (uint64_t)s->corrupt_at >= s->off && (uint64_t)s->corrupt_at < s->off + (uint64_t)n) {
    s->buf[(uint64_t)s->corrupt_at - s->off] ^= 0x5a;
    LOG_WARN("pool", NULL, "test hook: flipped the byte at offset %" PRId64 " in transit", s->corrupt_at);
  }
  s->off += (uint64_t)n;
  if (llorch_http_response_write(s->req, s->buf, (size_t)n) < 0) {
    files_send_finish(s);
    return;
  }
  if (s->off >= s->end) files_send_finish(s);
  else files_send_pump(s);
}

static void files_send_on_wait(uv_timer_t *t) { files_send_pump(t->data); }

static void files_send_pump(files_send *s) {
  if (!s->req || s->closing) return;
  /* Read more only once the client took what was sent: a slow receiver
   * (its bandwidth bound) never makes us buffer the file in memory. */
  if (llorch_http_request_queued_bytes(s->req) > FILES_SEND_QUEUE) {
    uv_timer_start(&s->wait, files_send_on_wait, FILES_SEND_POLL_MS, 0);
    return;
  }
  uint64_t want = s->end - s->off < FILES_CHUNK ? s->end - s->off : FILES_CHUNK;
  uv_buf_t b = uv_buf_init(s->buf, (unsigned)want);
  s->fs.data = s;
  if (uv_fs_read(s->p->loop, &s->fs, s->fd, &b, 1, (int64_t)s->off, files_send_on_read) < 0) {
    files_send_finish(s);
    return;
  }
  s->reading = true;
}

int pool_range_parse(const char *v, uint64_t *start, llorch_errmsg *em) {
  char shown[80];
  llorch_str_show(shown, sizeof shown, v, strlen(v), 64);
  if (strncmp(v, "bytes=", 6) != 0 || !isdigit((unsigned char)v[6]))
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "'Range' must be bytes=N- (N a byte offset; one open range only), got \"%s\"", shown);
  errno = 0;
  char *end = NULL;
  unsigned long long n = strtoull(v + 6, &end, 10);
  if (errno || end[0] != '-' || end[1] != '\0')
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "'Range' must be bytes=N- (N a byte offset; one open range only), got \"%s\"", shown);
  *start = n;
  return 0;
}

static void files_on_content(pool *p, llorch_http_request *req, const char *file) {
  char path[4096];
  struct stat st;
  llorch_errmsg em = {{0}};
  int rc = files_locate(p, file, path, sizeof path, &st, &em);
  if (rc < 0) {
    files_respond_locate_error(req, rc, &em);
    return;
  }
  uint64_t size = (uint64_t)st.st_size, start = 0;
  const char *range = llorch_http_request_header(req, "Range");
  if (range && pool_range_parse(range, &start, &em) < 0) {
    llorch_http_respond_error(req, 400, "invalid_request_error", em.text, "Range", "INVALID_RANGE");
    return;
  }
  if (range && start >= size) {
    char size_s[32];
    snprintf(size_s, sizeof size_s, "bytes */%" PRIu64, size);
    llorch_http_response_header(req, "Content-Range", size_s);
    llorch_errmsg_set(&em, LLORCH_EINVAL, "'Range' starts at byte %" PRIu64 ", but %s has %" PRIu64 " bytes",
                      start, file, size);
    llorch_http_respond_error(req, 416, "invalid_request_error", em.text, "Range", "RANGE_NOT_SATISFIABLE");
    return;
  }
  files_send *s = calloc(1, sizeof *s);
  if (!s) {
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
    return;
  }
  s->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (s->fd < 0) {
    char msg[4400];
    snprintf(msg, sizeof msg, "cannot open %s: %s", path, strerror(errno));
    free(s);
    llorch_http_respond_error(req, 500, "server_error", msg, "file", "FILE_UNREADABLE");
    return;
  }
  s->p = p;
  s->req = req;
  s->off = start;
  s->end = size;
  s->corrupt_at = -1;
  /* Test hook (tests/e2e/cluster/files.test.mjs): the first N bodies sent
   * get one byte flipped in their middle, so the receiver's verification
   * can be seen to catch it. Never on without LLORCH_TEST_HOOKS=1. */
  if (p->corrupt_sends > 0 && size > start) {
    p->corrupt_sends--;
    s->corrupt_at = (int64_t)(start + (size - start) / 2);
  }
  uv_timer_init(p->loop, &s->wait);
  s->wait.data = s;
  char cr[96], sz[32];
  snprintf(sz, sizeof sz, "%" PRIu64, size);
  llorch_http_response_header(req, "X-Llorch-File-Size", sz);
  if (range) {
    snprintf(cr, sizeof cr, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start, size ? size - 1 : 0, size);
    llorch_http_response_header(req, "Content-Range", cr);
  }
  llorch_http_request_set_data(req, s, files_send_gone);
  if (llorch_http_response_start(req, range ? 206 : 200, "application/octet-stream") < 0) {
    llorch_http_request_set_data(req, NULL, NULL);
    s->req = NULL;
    files_send_free(s);
    return;
  }
  if (s->off >= s->end) files_send_finish(s); /* an empty file */
  else files_send_pump(s);
}

/* GET /v2/files/{file} and GET /v2/files/{file}/sha256. */
static void files_on_get(llorch_http_request *req, void *user) {
  pool *p = user;
  const char *path = llorch_http_request_path(req) + strlen("/v2/files/");
  char name[POOL_FILE_MAX + 16];
  size_t n = strlen(path);
  bool want_sha = n > 7 && strcmp(path + n - 7, "/sha256") == 0;
  if (want_sha) n -= 7;
  /* A longer name is cut here, still past POOL_FILE_MAX: the check says "too long". */
  if (n >= sizeof name) n = sizeof name - 1;
  memcpy(name, path, n);
  name[n] = '\0';
  llorch_errmsg em = {{0}};
  if (pool_file_name_check("file", name, &em) < 0) {
    llorch_http_respond_error(req, 400, "invalid_request_error", em.text, "file", "INVALID_REQUEST");
    return;
  }
  if (want_sha) files_on_sha256(p, req, name);
  else files_on_content(p, req, name);
}

/* ---- fetching ---- */

const char *pool_fetch_state_name(pool_fetch_state s) {
  static const char *const names[] = {"running", "verifying", "interrupted", "failed", "done", "cancelled"};
  return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown";
}

static bool fetch_active(const pool_fetch *f) {
  return f->state == POOL_FETCH_RUNNING || f->state == POOL_FETCH_VERIFYING;
}

/* Nothing of f is in flight (no call, write or hash): it may be freed or restarted. */
static bool fetch_idle(const pool_fetch *f) { return !f->call && !f->writing && !f->hashing; }

static void fetch_close_fd(pool_fetch *f) {
  if (f->fd >= 0) close(f->fd);
  f->fd = -1;
}

/* Ends f in state (failed / cancelled / interrupted) with why; the part is
 * deleted except for an interruption (resumable). Called once nothing is in
 * flight, or again when the last flight lands. */
static void fetch_settle(pool_fetch *f) {
  if (!fetch_idle(f) || f->settled) return;
  f->settled = true;
  f->finished_ms = pool_now_ms();
  uv_timer_stop(&f->throttle);
  fetch_close_fd(f);
  if (f->state != POOL_FETCH_INTERRUPTED && f->state != POOL_FETCH_DONE) unlink(f->tmp);
  if (f->state == POOL_FETCH_INTERRUPTED) f->rate = 0;
  if (f->p->stopping) pool_maybe_finish(f->p);
  pool_fetch_report_soon(f->p);
}

static void fetch_end(pool_fetch *f, pool_fetch_state st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fetch_end(pool_fetch *f, pool_fetch_state st, const char *fmt, ...) {
  if (!fetch_active(f)) return; /* the first ending wins */
  f->state = st;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(f->error, sizeof f->error, fmt, ap);
  va_end(ap);
  LOG_WARN("pool", NULL, "copy of %s from %s %s: %s", f->file, f->source, pool_fetch_state_name(st), f->error);
  if (f->call) llorch_http_call_cancel(f->call); /* on_done clears f->call */
  fetch_settle(f);
}

static void fetch_apply_pause(pool_fetch *f) {
  if (!f->call) return;
  bool pause = f->throttled || f->pending_len >= FILES_WRITE_HIGH;
  llorch_http_call_pause(f->call, pause);
}

static void fetch_on_throttle(uv_timer_t *t) {
  pool_fetch *f = t->data;
  f->throttled = false;
  fetch_apply_pause(f);
}

static void fetch_verify(pool_fetch *f);
static void fetch_write_next(pool_fetch *f);

static void fetch_on_write(uv_fs_t *fs) {
  pool_fetch *f = fs->data;
  ssize_t n = fs->result;
  uv_fs_req_cleanup(fs);
  f->writing = false;
  if (n < 0 || (size_t)n != f->inflight_len) {
    fetch_end(f, POOL_FETCH_FAILED, "writing %s failed: %s", f->tmp,
              n < 0 ? uv_strerror((int)n) : "short write (disk full?)");
    fetch_settle(f);
    return;
  }
  f->written += (uint64_t)n;
  if (!fetch_active(f)) {
    fetch_settle(f);
    return;
  }
  fetch_write_next(f);
}

/* Starts a write of what waits in pending (swapping the buffers), or, when
 * nothing waits and the response is complete, the verification. */
static void fetch_write_next(pool_fetch *f) {
  if (f->writing || !fetch_active(f)) return;
  if (f->pending_len == 0) {
    fetch_apply_pause(f);
    if (f->body_complete) fetch_verify(f);
    return;
  }
  char *t = f->inflight;
  size_t tcap = f->inflight_cap;
  f->inflight = f->pending;
  f->inflight_cap = f->pending_cap;
  f->inflight_len = f->pending_len;
  f->pending = t;
  f->pending_cap = tcap;
  f->pending_len = 0;
  uv_buf_t b = uv_buf_init(f->inflight, (unsigned)f->inflight_len);
  f->wfs.data = f;
  int rc = uv_fs_write(f->p->loop, &f->wfs, f->fd, &b, 1, (int64_t)f->written, fetch_on_write);
  if (rc < 0) {
    fetch_end(f, POOL_FETCH_FAILED, "writing %s failed: %s", f->tmp, uv_strerror(rc));
    return;
  }
  f->writing = true;
  fetch_apply_pause(f);
}

static void fetch_on_headers(llorch_http_call *call, int status, void *user) {
  pool_fetch *f = user;
  (void)call;
  if (status != 200 && status != 206) return; /* on_done reports the answer */
  const char *cr = llorch_http_call_header(call, "Content-Range");
  uint64_t at = 0;
  if (status == 206 && cr) {
    unsigned long long s = 0;
    if (sscanf(cr, "bytes %llu-", &s) == 1) at = s;
  }
  /* The body must start where the part ends, or the copy would be spliced. */
  if (at != f->done)
    fetch_end(f, POOL_FETCH_INTERRUPTED, "%s answered from byte %" PRIu64 ", the copy needs byte %" PRIu64,
              f->source, at, f->done);
}

static void fetch_on_data(llorch_http_call *call, const char *data, size_t len, void *user) {
  (void)call;
  pool_fetch *f = user;
  if (!fetch_active(f)) return;
  if (llorch_http_call_status(call) / 100 != 2) { /* an error envelope: keep its start for the error */
    size_t take = sizeof f->answer - 1 - f->answer_len < len ? sizeof f->answer - 1 - f->answer_len : len;
    memcpy(f->answer + f->answer_len, data, take);
    f->answer_len += take;
    return;
  }
  if (f->done + len > f->size) {
    fetch_end(f, POOL_FETCH_FAILED, "%s sent more than the %" PRIu64 " bytes the file should have", f->source,
              f->size);
    return;
  }
  if (f->pending_len + len > f->pending_cap) {
    size_t cap = f->pending_cap ? f->pending_cap : 65536;
    while (cap < f->pending_len + len) cap *= 2;
    char *nb = realloc(f->pending, cap);
    if (!nb) {
      fetch_end(f, POOL_FETCH_FAILED, "out of memory");
      return;
    }
    f->pending = nb;
    f->pending_cap = cap;
  }
  memcpy(f->pending + f->pending_len, data, len);
  f->pending_len += len;
  f->done += len;
  /* rate: bytes over a window of about a second */
  int64_t now = pool_now_ms();
  f->window_bytes += len;
  if (now - f->window_start_ms >= 1000) {
    f->rate = (double)f->window_bytes * 1000.0 / (double)(now - f->window_start_ms);
    f->window_start_ms = now;
    f->window_bytes = 0;
  }
  /* The bandwidth bound: ahead of rate x elapsed -> pause until on time. */
  uint64_t bw = f->p->cfg->pool.fetch_bandwidth;
  if (bw > 0) {
    uint64_t got = f->done - f->resumed_from;
    int64_t due_ms = (int64_t)(got * 1000 / bw);
    int64_t ahead = due_ms - (now - f->started_ms);
    if (ahead > 0 && !f->throttled) {
      f->throttled = true;
      uv_timer_start(&f->throttle, fetch_on_throttle, (uint64_t)ahead, 0);
    }
  }
  fetch_write_next(f);
  fetch_apply_pause(f);
}

static void fetch_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  pool_fetch *f = user;
  f->call = NULL;
  if (!fetch_active(f)) {
    fetch_settle(f);
    return;
  }
  if (err) {
    fetch_end(f, POOL_FETCH_INTERRUPTED, "lost %s after %" PRIu64 " of %" PRIu64 " bytes: %s", f->source, f->done,
              f->size, errmsg ? errmsg : llorch_strerror(err));
    return;
  }
  int status = llorch_http_call_status(call);
  if (status != 200 && status != 206) {
    char shown[200];
    llorch_str_show(shown, sizeof shown, f->answer, f->answer_len, 160);
    fetch_end(f, POOL_FETCH_INTERRUPTED, "%s answered %d: %s", f->source, status, shown);
    return;
  }
  if (f->done != f->size) {
    fetch_end(f, POOL_FETCH_INTERRUPTED, "%s ended the file after %" PRIu64 " of %" PRIu64 " bytes", f->source,
              f->done, f->size);
    return;
  }
  f->body_complete = true;
  fetch_write_next(f);
}

static void fetch_verify_after(uv_work_t *wk, int status) {
  pool_fetch *f = (pool_fetch *)((char *)wk->data - offsetof(pool_fetch, job));
  f->hashing = false;
  if (f->state != POOL_FETCH_VERIFYING) { /* cancelled meanwhile */
    fetch_settle(f);
    return;
  }
  if (status != 0 || f->job.err != 0) {
    f->state = POOL_FETCH_RUNNING; /* so fetch_end takes it */
    fetch_end(f, POOL_FETCH_FAILED, "cannot read the copy %s: %s", f->tmp,
              status ? uv_strerror(status) : strerror(-f->job.err));
    return;
  }
  if (strcmp(f->job.hex, f->sha256) != 0 || f->job.bytes != f->size) {
    f->state = POOL_FETCH_RUNNING;
    fetch_end(f, POOL_FETCH_FAILED,
              "verification failed: the copy (%" PRIu64 " bytes) hashes to sha256 %s, the source's file is %s; "
              "the copy was deleted",
              f->job.bytes, f->job.hex, f->sha256);
    return;
  }
  fetch_close_fd(f);
  /* link() refuses to replace a file someone put there meanwhile; rename
   * would silently overwrite it. */
  if (link(f->tmp, f->final) != 0) {
    int e = errno;
    f->state = POOL_FETCH_RUNNING;
    fetch_end(f, POOL_FETCH_FAILED, "cannot make %s visible: %s", f->final, strerror(e));
    return;
  }
  unlink(f->tmp);
  f->state = POOL_FETCH_DONE;
  f->rate = 0;
  f->finished_ms = pool_now_ms();
  files_sha_remember(f->p, f->final, f->sha256);
  LOG_INFO("pool", NULL, "copy of %s from %s verified (sha256 %s, %" PRIu64 " bytes) and in place", f->file,
           f->source, f->sha256, f->size);
  fetch_settle(f);
  pool_refresh(f->p); /* the next report lists the file */
}

static void fetch_verify(pool_fetch *f) {
  f->state = POOL_FETCH_VERIFYING;
  uv_timer_stop(&f->throttle);
  memset(&f->job, 0, sizeof f->job);
  snprintf(f->job.path, sizeof f->job.path, "%s", f->tmp);
  f->job.sync_first = true;
  f->job.work.data = &f->job; /* files_hash_run reads the job; the callback finds f around it */
  int rc = uv_queue_work(f->p->loop, &f->job.work, files_hash_run, fetch_verify_after);
  if (rc < 0) {
    f->state = POOL_FETCH_RUNNING;
    fetch_end(f, POOL_FETCH_FAILED, "cannot queue the verification: %s", uv_strerror(rc));
    return;
  }
  f->hashing = true;
  pool_fetch_report_soon(f->p);
}

static pool_fetch *fetch_find(pool *p, const char *file) {
  for (pool_fetch *f = p->fetches; f; f = f->next)
    if (strcmp(f->file, file) == 0) return f;
  return NULL;
}

static void fetch_throttle_closed(uv_handle_t *h) { free(h->data); }

static void fetch_free(pool_fetch *f) {
  free(f->pending);
  free(f->inflight);
  uv_close((uv_handle_t *)&f->throttle, fetch_throttle_closed);
}

/* Drops the oldest finished copy when the list is full; false when every entry is active. */
static bool fetch_make_room(pool *p) {
  int n = 0;
  pool_fetch *oldest = NULL, **oldest_pp = NULL;
  for (pool_fetch **pp = &p->fetches; *pp; pp = &(*pp)->next) {
    n++;
    pool_fetch *f = *pp;
    if (fetch_active(f) || !fetch_idle(f) || f->state == POOL_FETCH_INTERRUPTED) continue;
    if (!oldest || f->finished_ms < oldest->finished_ms) {
      oldest = f;
      oldest_pp = pp;
    }
  }
  if (n < FILES_MAX_FETCHES) return true;
  if (!oldest) return false;
  *oldest_pp = oldest->next;
  fetch_free(oldest);
  return true;
}

static void fetch_respond(llorch_http_request *req, int status, const pool_fetch *f) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"fetch\":");
  pool_fetch_write(&b, f);
  llorch_jbuf_cstr(&b, "}");
  if (llorch_jbuf_error(&b))
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
  else
    llorch_http_respond_json(req, status, b.data);
  llorch_jbuf_free(&b);
}

static void fetch_bad(llorch_http_request *req, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fetch_bad(llorch_http_request *req, const char *param, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  llorch_http_respond_error(req, 400, "invalid_request_error", msg, param, "INVALID_REQUEST");
}

/* POST /v2/files/fetch {"file","source_url","sha256","size","id"}. */
static void files_on_fetch(llorch_http_request *req, void *user) {
  pool *p = user;
  if (p->stopping) {
    llorch_http_respond_error(req, 503, "server_error", "the pool is shutting down", NULL, "SHUTTING_DOWN");
    return;
  }
  size_t len = 0;
  const char *text = llorch_http_request_body(req, &len);
  cJSON *doc = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_json_parse(text, len, true, &doc, &em) < 0) {
    fetch_bad(req, llorch_json_errparam(), "%s", em.text); /* a NUL, bad UTF-8 ... names its field */
    return;
  }
  const char *file = NULL, *url = NULL, *sha = NULL, *id = "";
  int64_t size = 0;
  char shown[80];
  if (llorch_json_get_string(doc, "", "file", true, &file, &em) < 0 ||
      pool_file_name_check("file", file, &em) < 0) {
    fetch_bad(req, "file", "%s", em.text);
    goto done;
  }
  if (llorch_json_get_string(doc, "", "sha256", true, &sha, &em) < 0) {
    fetch_bad(req, "sha256", "%s", em.text);
    goto done;
  }
  if (!llorch_sha256_hex_valid(sha)) {
    fetch_bad(req, "sha256", "'sha256' must be 64 lower-case hex digits, got \"%s\"",
              llorch_str_show(shown, sizeof shown, sha, strlen(sha), 70));
    goto done;
  }
  if (llorch_json_get_int(doc, "", "size", true, 1, INT64_MAX / 2, &size, &em) < 0) {
    fetch_bad(req, "size", "%s", em.text);
    goto done;
  }
  if (llorch_json_get_string(doc, "", "source_url", true, &url, &em) < 0) {
    fetch_bad(req, "source_url", "%s", em.text);
    goto done;
  }
  if (strncmp(url, "http://", 7) != 0 || !url[7] || strlen(url) >= sizeof p->fetches->source) {
    fetch_bad(req, "source_url", "'source_url' must be a pool's http://HOST:PORT URL (under 256 bytes), got \"%s\"",
              llorch_str_show(shown, sizeof shown, url, strlen(url), 64));
    goto done;
  }
  if (llorch_json_get_string(doc, "", "id", false, &id, &em) < 0) {
    fetch_bad(req, "id", "%s", em.text);
    goto done;
  }
  if (strlen(id) >= sizeof p->fetches->id) {
    fetch_bad(req, "id", "'id' is too long: %zu bytes, at most %zu", strlen(id), sizeof p->fetches->id - 1);
    goto done;
  }
  if (p->cfg->pool.model_dirs.count == 0) {
    llorch_http_respond_error(req, 409, "invalid_request_error", "the pool has no model directory", NULL,
                              "NO_MODEL_DIR");
    goto done;
  }
  char path[4096];
  if (pool_model_locate(&p->cfg->pool.model_dirs, file, path, sizeof path) == 0) {
    char msg[4400];
    snprintf(msg, sizeof msg, "%s exists on this pool already (%s)", file, path);
    llorch_http_respond_error(req, 409, "invalid_request_error", msg, "file", "FILE_EXISTS");
    goto done;
  }
  pool_fetch *f = fetch_find(p, file);
  if (f && (fetch_active(f) || !fetch_idle(f))) {
    char msg[600];
    snprintf(msg, sizeof msg, "a copy of %s is already %s (id %s): cancel it first", file,
             pool_fetch_state_name(f->state), f->id);
    llorch_http_respond_error(req, 409, "invalid_request_error", msg, "file", "FETCH_RUNNING");
    goto done;
  }
  const char *dir = p->cfg->pool.model_dirs.items[0];
  uint64_t have = 0;
  bool resume = f && f->state == POOL_FETCH_INTERRUPTED && strcmp(f->sha256, sha) == 0 && f->size == (uint64_t)size;
  if (f && !resume) {
    if (f->state == POOL_FETCH_INTERRUPTED) unlink(f->tmp); /* another file now: start over */
  }
  if (resume) {
    struct stat st;
    if (stat(f->tmp, &st) == 0 && (uint64_t)st.st_size <= (uint64_t)size) have = (uint64_t)st.st_size;
  }
  /* Disk space first: a copy that would fill the disk fails before a byte moves. */
  struct statvfs vfs;
  if (statvfs(dir, &vfs) != 0) {
    char msg[4400];
    snprintf(msg, sizeof msg, "cannot read the free space of %s: %s", dir, strerror(errno));
    llorch_http_respond_error(req, 500, "server_error", msg, NULL, "DISK_UNKNOWN");
    goto done;
  }
  uint64_t avail = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
  if (avail < (uint64_t)size - have) {
    char msg[4400];
    snprintf(msg, sizeof msg, "not enough disk space for %s in %s: needs %" PRIu64 " bytes, %" PRIu64 " bytes free",
             file, dir, (uint64_t)size - have, avail);
    llorch_http_respond_error(req, 507, "server_error", msg, "size", "INSUFFICIENT_STORAGE");
    goto done;
  }
  if (!f) {
    if (!fetch_make_room(p)) {
      llorch_http_respond_error(req, 429, "server_error", "too many copies running on this pool", NULL,
                                "TOO_MANY_FETCHES");
      goto done;
    }
    f = calloc(1, sizeof *f);
    if (!f) {
      llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
      goto done;
    }
    f->p = p;
    f->fd = -1;
    uv_timer_init(p->loop, &f->throttle);
    f->throttle.data = f;
    f->next = p->fetches;
    p->fetches = f;
  }
  snprintf(f->file, sizeof f->file, "%s", file);
  snprintf(f->id, sizeof f->id, "%s", id);
  snprintf(f->sha256, sizeof f->sha256, "%s", sha);
  snprintf(f->source, sizeof f->source, "%s", url);
  size_t ul = strlen(f->source);
  while (ul > 0 && f->source[ul - 1] == '/') f->source[--ul] = '\0';
  f->size = (uint64_t)size;
  snprintf(f->tmp, sizeof f->tmp, "%s/.llorch-fetch-%s.part", dir, file);
  snprintf(f->final, sizeof f->final, "%s/%s", dir, file);
  f->done = f->written = f->resumed_from = have;
  f->state = POOL_FETCH_RUNNING;
  f->error[0] = '\0';
  f->answer_len = 0;
  f->settled = f->body_complete = f->throttled = false;
  f->pending_len = 0;
  f->rate = 0;
  f->started_ms = f->window_start_ms = pool_now_ms();
  f->window_bytes = 0;
  f->finished_ms = 0;
  /* O_NOFOLLOW: a link planted at the part's name must not redirect the write. */
  f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (have ? 0 : O_TRUNC), 0644);
  if (f->fd < 0) {
    int e = errno;
    f->state = POOL_FETCH_FAILED;
    snprintf(f->error, sizeof f->error, "cannot create %.300s: %s", f->tmp, strerror(e));
    f->settled = true;
    f->finished_ms = pool_now_ms();
    llorch_http_respond_error(req, 500, "server_error", f->error, NULL, "FETCH_FAILED");
    goto done;
  }
  if (have && ftruncate(f->fd, (off_t)have) != 0) { /* keep exactly what was counted */
    have = 0;
    f->done = f->written = f->resumed_from = 0;
  }
  char target[800], auth[300], range[64];
  snprintf(target, sizeof target, "%s/v2/files/%s", f->source, file);
  const char *hdr[8];
  int k = 0;
  if (p->cluster_token[0]) {
    snprintf(auth, sizeof auth, "Bearer %s", p->cluster_token);
    hdr[k++] = "Authorization";
    hdr[k++] = auth;
  }
  if (have) {
    snprintf(range, sizeof range, "bytes=%" PRIu64 "-", have);
    hdr[k++] = "Range";
    hdr[k++] = range;
  }
  hdr[k] = NULL;
  llorch_http_call_opts o = {0};
  o.method = "GET";
  o.url = target;
  o.headers = hdr;
  o.connect_timeout_ms = 3000;
  o.read_timeout_ms = 30000;
  o.on_headers = fetch_on_headers;
  o.on_data = fetch_on_data;
  o.on_done = fetch_on_done;
  o.user = f;
  LOG_INFO("pool", llorch_http_request_id(req), "copying %s from %s (%" PRIu64 " bytes%s%s)", file, f->source,
           f->size, have ? ", resuming" : "", have ? "" : "");
  if (have == f->size) {
    /* Every byte is here already: verify only. */
    f->body_complete = true;
    fetch_respond(req, 202, f);
    fetch_verify(f);
    goto done;
  }
  if (llorch_http_call_start(p->client, &o, &f->call, &em) < 0) {
    f->state = POOL_FETCH_FAILED;
    snprintf(f->error, sizeof f->error, "%.390s", em.text);
    f->call = NULL;
    fetch_settle(f);
    fetch_bad(req, "source_url", "%s", em.text);
    goto done;
  }
  fetch_respond(req, 202, f);
done:
  cJSON_Delete(doc);
}

/* DELETE /v2/files/fetch/{file}: cancels a copy and deletes its part. */
static void files_on_fetch_cancel(llorch_http_request *req, void *user) {
  pool *p = user;
  const char *file = llorch_http_request_path(req) + strlen("/v2/files/fetch/");
  llorch_errmsg em = {{0}};
  if (pool_file_name_check("file", file, &em) < 0) {
    llorch_http_respond_error(req, 400, "invalid_request_error", em.text, "file", "INVALID_REQUEST");
    return;
  }
  pool_fetch *f = fetch_find(p, file);
  if (!f) {
    char msg[400];
    snprintf(msg, sizeof msg, "no copy of %s on this pool", file);
    llorch_http_respond_error(req, 404, "invalid_request_error", msg, "file", "FETCH_NOT_FOUND");
    return;
  }
  if (fetch_active(f)) {
    fetch_end(f, POOL_FETCH_CANCELLED, "cancelled");
  } else if (f->state == POOL_FETCH_INTERRUPTED) {
    f->state = POOL_FETCH_CANCELLED;
    snprintf(f->error, sizeof f->error, "cancelled");
    unlink(f->tmp);
  }
  f->finished_ms = pool_now_ms();
  fetch_respond(req, 200, f);
}

/* ---- the report ---- */

void pool_fetch_write(llorch_jbuf *b, const pool_fetch *f) {
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "file", f->file);
  llorch_jbuf_kstr(b, "id", f->id);
  llorch_jbuf_kstr(b, "source", f->source);
  llorch_jbuf_kstr(b, "state", pool_fetch_state_name(f->state));
  llorch_jbuf_kint(b, "bytes_done", (int64_t)f->done);
  llorch_jbuf_kint(b, "bytes_total", (int64_t)f->size);
  llorch_jbuf_kint(b, "rate_bytes_per_s", (int64_t)f->rate);
  llorch_jbuf_key(b, "eta_s");
  if (f->state == POOL_FETCH_RUNNING && f->rate >= 1.0)
    llorch_jbuf_int(b, (int64_t)((double)(f->size - f->done) / f->rate + 0.5));
  else
    llorch_jbuf_null(b);
  llorch_jbuf_kstr(b, "error", f->error[0] ? f->error : NULL);
  llorch_jbuf_end(b);
}

void pool_fetches_write(llorch_jbuf *b, const pool_fetch *list) {
  llorch_jbuf_arr(b);
  for (const pool_fetch *f = list; f; f = f->next) pool_fetch_write(b, f);
  llorch_jbuf_end(b);
}

/* ---- lifecycle ---- */

int pool_files_attach(pool *p) {
  /* The corruption hook exists for the e2e test only (see files_on_content). */
  const char *hooks = getenv("LLORCH_TEST_HOOKS"), *n = getenv("LLORCH_TEST_CORRUPT_SENDS");
  if (n && hooks && strcmp(hooks, "1") == 0) {
    p->corrupt_sends = atoi(n);
    LOG_WARN("pool", NULL, "test hook: the next %d model file bodies sent get one byte flipped", p->corrupt_sends);
  } else if (n) {
    LOG_WARN("pool", NULL, "LLORCH_TEST_CORRUPT_SENDS is ignored without LLORCH_TEST_HOOKS=1");
  }
  llorch_service *svc = p->svc;
  if (llorch_service_route(svc, "GET", "/v2/files/*", LLORCH_ACCESS_CLUSTER, files_on_get, p) < 0 ||
      llorch_service_route(svc, "POST", "/v2/files/fetch", LLORCH_ACCESS_CLUSTER, files_on_fetch, p) < 0 ||
      llorch_service_route(svc, "DELETE", "/v2/files/fetch/*", LLORCH_ACCESS_CLUSTER, files_on_fetch_cancel, p) < 0)
    return LLORCH_ENOMEM;
  return 0;
}

void pool_files_shutdown(pool *p) {
  for (pool_fetch *f = p->fetches; f; f = f->next) {
    if (fetch_active(f)) fetch_end(f, POOL_FETCH_CANCELLED, "the pool is shutting down");
    else if (f->state == POOL_FETCH_INTERRUPTED) unlink(f->tmp); /* nobody resumes it now */
  }
}

bool pool_files_idle(const pool *p) {
  for (const pool_fetch *f = p->fetches; f; f = f->next)
    if (!fetch_idle(f)) return false;
  return true;
}

void pool_files_close(pool *p) {
  while (p->fetches) {
    pool_fetch *f = p->fetches;
    p->fetches = f->next;
    fetch_close_fd(f);
    fetch_free(f);
  }
}

void pool_files_free(pool *p) {
  while (p->shas) {
    files_sha *e = p->shas;
    p->shas = e->next;
    free(e);
  }
}
