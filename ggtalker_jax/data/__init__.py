"""ggtalker_jax.data: face landmarks (`landmarks`), head crops (`crop`), masks
(`masks`), the prepared-dataset format and reader (`dataset`), the grain loader (`loader`) and the
video -> dataset pipeline (`ingest.prepare`). Errors: `errors.MediaError`, `errors.DatasetError`."""
