"""hrnet_mm's CPU kernels: Winograd 3x3 convolutions (:mod:`.winograd`) and batch norm fused with the residual sum
and ReLU (:mod:`.fused_norm`), compiled from ``csrc/`` on first use."""
