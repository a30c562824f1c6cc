//! Quantization: activation histograms, choosing scale/zero point, graph rewrite passes.
