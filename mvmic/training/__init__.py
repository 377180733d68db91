"""Training MVMICNet and its task heads on the corpus's train split (mvmic.corpus): everything that reads the
training data lives here; what the codec and the service run lives in mvmic.model, which imports nothing from here.

    loop.py           what every stage shares: settings, seeding and resume, the loop, checkpoints, crops,
                      the corpus's planes, weights files with their manifests
    stage1_codec.py   `mvmic train codec`: the v2 codec's entropy model (rate at every quality)
    residual.py       `mvmic train residual`: the residual layer's entropy model (near-lossless, lossless)
    table_fit.py      `mvmic train contexts`: the served v3 codec's lookup-table contexts and coding tables
    samples.py        training samples of the task networks: crops with synthetic lesions, organ maps, targets
    task_loss.py      the task loss L_task (lesion and organ segmentation, detection) and its targets
    stage2_heads.py   `mvmic train heads | pixel-reference`: stage 2, the task heads on the frozen codec
    stage3_joint.py   `mvmic train joint`: stage 3, codec and heads together, R + lambda D + beta L_task
    int8_calibration.py  the int8 heads' calibration planes (`mvmic export-onnx --int8`)
"""
