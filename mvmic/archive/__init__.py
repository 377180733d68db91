"""Archive jobs: a folder tree of DICOM files or a PACS's studies compressed once, on Ray.

    ledger.py   the job's SQLite ledger: what became of every instance, what a rerun skips
    sources.py  where instances come from: a folder tree, or QIDO-RS/WADO-RS over a PACS
    worker.py   one worker: the codec loaded once; read, compress (the gateway's storage path), write or store
    engine.py   the driver: the ledger, a local or remote Ray, an actor per worker, progress and summary
"""
