/*
 * The decode step as a CUDA graph: at batch 1 a small model's step is a few
 * hundred short kernels, and launching them one by one from the host costs
 * more than running them (why llama.cpp and vLLM reach only a fraction of
 * the bandwidth floor on 0.5B models). Every kernel reads the batch (tokens,
 * positions, slots, output rows) from the fixed device arrays in scratch and
 * its grid depends only on the number of entries, so one graph per batch
 * size is captured once and replayed with new contents in those arrays.
 *
 * Graphs are used for single-GPU decode steps (every entry its sequence's
 * only one, every entry wanting logits); anything else runs eagerly.
 * LLORCH_CUDA_GRAPHS=0 in the environment turns them off (for comparison).
 */
#include "cuda-impl.cuh"

int cuda_graph_decode(cuda_ctx *c, int n, bool *ran) {
  *ran = false;
  if (!c->graphs_enabled || c->n_dev != 1 || n < 1 || n > CUDA_GRAPH_MAX) return 0;
  cuda_dev *dv = &c->dev[0];
  if (!c->graphs[n]) {
    cudaGraph_t g = nullptr;
    if (cudaStreamBeginCapture(dv->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      (void)cudaGetLastError();
      c->graphs_enabled = false;
      LOG_WARN("cuda", NULL, "cannot capture a CUDA graph; decode steps run eagerly");
      return 0;
    }
    int rc = cuda_stage_run(c, 0, n, 0, n, 0);
    cudaError_t e = cudaStreamEndCapture(dv->stream, &g);
    if (rc || e != cudaSuccess || !g) {
      (void)cudaGetLastError();
      if (g) cudaGraphDestroy(g);
      c->graphs_enabled = false;
      LOG_WARN("cuda", NULL, "CUDA graph capture failed (%s); decode steps run eagerly",
               cudaGetErrorString(e));
      return 0;
    }
    cudaGraphExec_t exec = nullptr;
    e = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) {
      /* out of memory here fails nothing: the step runs eagerly */
      (void)cudaGetLastError();
      LOG_WARN("cuda", NULL, "CUDA graph for %d entries not instantiated (%s); running eagerly", n,
               cudaGetErrorString(e));
      return 0;
    }
    c->graphs[n] = exec;
  }
  cudaError_t e = cudaGraphLaunch(c->graphs[n], dv->stream);
  if (e != cudaSuccess) return LLORCH_EDEVICE;
  *ran = true;
  return 0;
}

void cuda_graph_free(cuda_ctx *c) {
  for (int i = 0; i <= CUDA_GRAPH_MAX; i++) {
    if (c->graphs[i]) cudaGraphExecDestroy(c->graphs[i]);
    c->graphs[i] = nullptr;
  }
}
