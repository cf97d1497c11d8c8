"""Where rows come from: the strict CSV reader, chunks of whole batches, the structure pre-scan,
byte pieces for cluster workers."""
