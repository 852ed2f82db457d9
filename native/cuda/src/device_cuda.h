/* What the CUDA backend (device_cuda.c) shares with the core's other driver-API files
 * (share_cuda.c): the one opened driver and the one way a failed call becomes an error. */
#ifndef THAW_DEVICE_CUDA_H
#define THAW_DEVICE_CUDA_H

/* Opens libcuda.so.1 and calls cuInit, once per process; 0, or the error saying why not. */
int thaw_cuda_driver(void);
/* An entry point of the opened driver, or NULL when it lacks it (or none is open). */
void *thaw_cuda_symbol(const char *name);
/* The error for a failed driver call: "what failed: the driver's text (CUresult n)", of kind
 * out_of_memory when the driver ran out of memory, THAWCORE_ERR_CUDA otherwise. */
int thaw_cuda_fail(int result, const char *what, int out_of_memory);

#endif
