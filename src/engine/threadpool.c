/*
 * Persistent pthread pool: a generation counter starts a region, a done
 * counter ends it. Spin-then-sleep on both sides.
 */
#include "llorch/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "llorch/error.h"

/* Pause-spins before yielding, then yields before sleeping: the gap between
 * two regions of a forward pass is a few microseconds, so a worker mostly
 * catches the next region spinning; when the cores are oversubscribed the
 * yields hand the CPU to whoever holds the work we wait for. */
#define POOL_SPIN_ITERS 2000
#define POOL_YIELD_ITERS 200

struct llorch_threadpool {
  int n_threads;
  pthread_t *threads;           /* (n_threads - 1) workers */
  pthread_mutex_t mu;
  pthread_cond_t cv;            /* workers sleep here between regions */
  atomic_uint generation;       /* bumped to start a region */
  atomic_int n_done;            /* workers finished with the current region */
  atomic_bool stop;
  llorch_task_fn fn;            /* current region (written before generation) */
  void *arg;
};

typedef struct pool_worker_arg {
  llorch_threadpool *tp;
  int ith;
} pool_worker_arg;

static inline void pool_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static void *pool_worker_main(void *p) {
  pool_worker_arg *wa = p;
  llorch_threadpool *tp = wa->tp;
  const int ith = wa->ith;
  free(wa);
  /* not a load: a thread that starts late must still see the first region */
  unsigned seen = 0;
  for (;;) {
    unsigned g;
    int spins = 0;
    while ((g = atomic_load_explicit(&tp->generation, memory_order_acquire)) == seen &&
           !atomic_load_explicit(&tp->stop, memory_order_acquire)) {
      if (++spins < POOL_SPIN_ITERS) {
        pool_cpu_relax();
        continue;
      }
      if (spins < POOL_SPIN_ITERS + POOL_YIELD_ITERS) {
        sched_yield();
        continue;
      }
      pthread_mutex_lock(&tp->mu);
      while (atomic_load_explicit(&tp->generation, memory_order_acquire) == seen &&
             !atomic_load_explicit(&tp->stop, memory_order_acquire))
        pthread_cond_wait(&tp->cv, &tp->mu);
      pthread_mutex_unlock(&tp->mu);
    }
    if (atomic_load_explicit(&tp->stop, memory_order_acquire)) return NULL;
    seen = g;
    tp->fn(tp->arg, ith, tp->n_threads);
    atomic_fetch_add_explicit(&tp->n_done, 1, memory_order_acq_rel);
  }
}

int llorch_threadpool_init(llorch_threadpool **out, int n_threads) {
  if (n_threads < 1 || n_threads > 1024) return LLORCH_EINVAL;
  llorch_threadpool *tp = calloc(1, sizeof *tp);
  if (!tp) return LLORCH_ENOMEM;
  tp->n_threads = n_threads;
  pthread_mutex_init(&tp->mu, NULL);
  pthread_cond_init(&tp->cv, NULL);
  atomic_init(&tp->generation, 0);
  atomic_init(&tp->n_done, 0);
  atomic_init(&tp->stop, false);
  int started = 0;
  if (n_threads > 1) {
    tp->threads = calloc((size_t)n_threads - 1, sizeof *tp->threads);
    if (!tp->threads) goto fail;
    for (int i = 1; i < n_threads; i++) {
      pool_worker_arg *wa = malloc(sizeof *wa);
      if (!wa) goto fail;
      wa->tp = tp;
      wa->ith = i;
      if (pthread_create(&tp->threads[i - 1], NULL, pool_worker_main, wa) != 0) {
        free(wa);
        goto fail;
      }
      started++;
    }
  }
  *out = tp;
  return 0;
fail:
  tp->n_threads = started + 1;
  llorch_threadpool_free(tp);
  return started < n_threads - 1 && n_threads > 1 ? LLORCH_EIO : LLORCH_ENOMEM;
}

void llorch_threadpool_free(llorch_threadpool *tp) {
  if (!tp) return;
  pthread_mutex_lock(&tp->mu);
  atomic_store_explicit(&tp->stop, true, memory_order_release);
  pthread_cond_broadcast(&tp->cv);
  pthread_mutex_unlock(&tp->mu);
  for (int i = 1; i < tp->n_threads; i++) pthread_join(tp->threads[i - 1], NULL);
  pthread_cond_destroy(&tp->cv);
  pthread_mutex_destroy(&tp->mu);
  free(tp->threads);
  free(tp);
}

int llorch_threadpool_size(const llorch_threadpool *tp) { return tp->n_threads; }

void llorch_threadpool_run(llorch_threadpool *tp, llorch_task_fn fn, void *arg) {
  if (tp->n_threads == 1) {
    fn(arg, 0, 1);
    return;
  }
  tp->fn = fn;
  tp->arg = arg;
  atomic_store_explicit(&tp->n_done, 0, memory_order_relaxed);
  /* the mutex orders this bump against a worker deciding to sleep */
  pthread_mutex_lock(&tp->mu);
  atomic_fetch_add_explicit(&tp->generation, 1, memory_order_acq_rel);
  pthread_cond_broadcast(&tp->cv);
  pthread_mutex_unlock(&tp->mu);
  fn(arg, 0, tp->n_threads);
  int spins = 0;
  while (atomic_load_explicit(&tp->n_done, memory_order_acquire) < tp->n_threads - 1) {
    if (++spins < POOL_SPIN_ITERS) pool_cpu_relax();
    else sched_yield();
  }
}
