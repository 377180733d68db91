"""MVMICNet: the learned, task-aware codec (training and evaluation).

Empty until the codec-core issue lands; its networks read pixels through
mvmic.pixels and data through mvmic.corpus, and join `mvmic bench rd` by
registering a codec in mvmic/bench/codecs/.
"""
