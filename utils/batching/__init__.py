"""The conversion stage: exported TFRecords -> validated records (damaged ones quarantined)
-> spatial split -> HDF5 shards (:mod:`utils.batching.split_and_batch`, the code of
``split_and_batch.ipynb``)."""
