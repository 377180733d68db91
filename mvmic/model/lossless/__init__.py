"""The exact layer: lossless and near-lossless coding of stored integers in the pixel domain.

    stream.py             exact streams: every frame an exact layer, no weights (compress / decompress)
    layer.py              the layer of one frame: planes, stripes, payload (encode_frame / decode_frame)
    plane_coder.py        prediction, contexts and binarisation of one plane (one kernel, both directions)
    range_coder.py        the binary adaptive range coder and its context mixing
    enc_least_squares.py  encoder only: the per-image least-squares predictors
    warm.py               fills numba's on-disk cache of the kernels (run at install)
"""
