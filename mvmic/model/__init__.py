"""MVMICNet: the learned, task-aware codec of DICOM pixels (no DICOM library: mvmic.pixels reads the images).

The codec facade is mvmic.model.codec (MvmicCodec); the `.mvm` format, every layer kind's payload
included, is described in mvmic.model.bitstream. Modules named enc_* hold what only an encoder runs
(searches whose results the bitstream carries); decoding never imports them.
"""
