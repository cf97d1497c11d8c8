"""The same file run on a Dask cluster: the driver, and what each worker does with a share."""
