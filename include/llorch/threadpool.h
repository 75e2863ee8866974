/*
 * A pool of persistent worker threads for the CPU engine's parallel loops.
 *
 * llorch_threadpool_run(tp, fn, arg) calls fn(arg, ith, nth) once on each of
 * the nth threads (the caller is thread 0) and returns when all have
 * finished: one parallel region, with a barrier at its end. Workers spin
 * briefly between regions (a decode step runs a few hundred regions, so
 * waking a sleeping thread each time would cost more than the work) and
 * then sleep on a condition variable, so an idle engine burns no CPU.
 *
 * One caller at a time: a pool is owned by one backend.
 */
#ifndef LLORCH_THREADPOOL_H
#define LLORCH_THREADPOOL_H

typedef struct llorch_threadpool llorch_threadpool;

typedef void (*llorch_task_fn)(void *arg, int ith, int nth);

/* n_threads >= 1 (1: no extra threads, run() calls fn inline). Returns 0,
 * LLORCH_EINVAL or LLORCH_ENOMEM / LLORCH_EIO when a thread cannot start. */
int llorch_threadpool_init(llorch_threadpool **out, int n_threads);
void llorch_threadpool_free(llorch_threadpool *tp);

int llorch_threadpool_size(const llorch_threadpool *tp);

void llorch_threadpool_run(llorch_threadpool *tp, llorch_task_fn fn, void *arg);

#endif /* LLORCH_THREADPOOL_H */
