"""Values transformed on their way from a source tensor to a target tensor: reshapes, input
channels and class rows (:mod:`.adapt`), position embeddings and relative-position tables on
another grid (:mod:`.positions`), and attention projections fused or split
(:mod:`.projections`)."""
