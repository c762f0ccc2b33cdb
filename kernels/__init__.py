"""guardrt.kernels: graph fusions and fused operators that the exporters insert."""
