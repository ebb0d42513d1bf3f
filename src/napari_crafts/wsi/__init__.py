"""Whole slides on dask.distributed: the source file as a picklable lazy source (``source_file``) and the
resumable scan/render/blend/pyramid job (``job``, ``generate_slide``). No Qt."""
