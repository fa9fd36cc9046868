r"""The gallery embedding job as an Apache Beam pipeline: the same shards as the local path, on any runner.

    shard numbers -> read each shard's cells (workers rebuild the source from its description)
                  -> RunInference (the exported SavedModel's aerial endpoint, batched by Beam)
                  -> group by shard -> write the shard (cvm.geo.shards, atomic, same header)

The DirectRunner runs it in tests and on one machine; unchanged on a cluster, e.g.

    cvm gallery build --runner beam --saved_model /shared/model --geotiff /shared/ortho/ --cell_m 172.5 \
        --gallery /shared/gallery --beam_options "--runner=DataflowRunner --project=P --region=R \
        --temp_location=gs://b/tmp --requirements_file=req.txt"
    (Flink: --runner=FlinkRunner --flink_master=HOST:8081 --environment_type=LOOPBACK;
     Spark: --runner=SparkRunner --spark_master_url=spark://HOST:7077)

The model, the rasters and the gallery must be on storage every worker sees under the same path: the source
and the shard writer use plain file I/O, so use a shared file system (NFS, a FUSE-mounted bucket such as
gcsfuse) rather than gs:// URLs.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from cvm.errors import CvmError


def _handler(saved_model: str, fingerprint: str, batch_size: int):
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    class SavedModelAerialHandler(ModelHandler):
        """RunInference handler: a cvm SavedModel's `aerial` endpoint on uint8 RGB cells."""

        def load_model(self):
            from cvm.geo.towers import SavedModelTowers

            towers = SavedModelTowers(saved_model)
            if towers.fingerprint != fingerprint:
                raise CvmError(f"the worker's SavedModel {saved_model} has fingerprint {towers.fingerprint}, "
                               f"the build's is {fingerprint}")
            return towers

        def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable:
            vectors = model.embed_aerial(np.stack(batch))
            return [PredictionResult(x, v) for x, v in zip(batch, vectors)]

        def batch_elements_kwargs(self):
            return {"min_batch_size": 1, "max_batch_size": int(batch_size)}

    return SavedModelAerialHandler()


def _read_shard(shard: int, description: dict, shard_size: int, candidates: int, cell_px):
    """(shard, cell_id) -> image for the kept cells, plus ('skip', shard, reason) records."""
    from cvm.geo.sources import source_from_description

    source = source_from_description(description)
    lo, hi = shard * shard_size, min(candidates, (shard + 1) * shard_size)
    for index, image, info in source.cells(lo, hi, cell_px):
        if image is None:
            yield ("skip", shard, info)
        else:
            yield ("cell", (shard, index, info), image)
    yield ("skip", shard, None)  # makes every shard appear in the group, even one with no cells


def run_pipeline(plan: dict, gallery: str, saved_model: str, shards: Sequence[int], batch_size: int = 32,
                 options: Optional[list] = None) -> None:
    """Embed the given shards of a build plan with Beam; blocks until the pipeline finishes."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    from cvm.geo import shards as shards_lib

    header = {"plan": shards_lib.plan_hash(plan), "fingerprint": plan["fingerprint"]}
    argv = list(options) if options else ["--runner=DirectRunner", "--direct_num_workers=1",
                                          "--direct_running_mode=in_memory"]
    handler = KeyedModelHandler(_handler(saved_model, plan["fingerprint"], batch_size))
    description, shard_size, candidates = plan["source"], plan["shard_size"], plan["candidates"]
    cell_px = tuple(plan["cell_px"])

    def write(item):
        shard, records = item
        vectors, meta, skipped = [], {k: [] for k in shards_lib.META_KEYS}, {}
        cells = []
        for kind, payload in records:
            if kind == "skip":
                if payload is not None:
                    skipped[payload] = skipped.get(payload, 0) + 1
            else:
                cells.append(payload)
        for index, info, vector in sorted(cells, key=lambda c: c[0]):  # shard order = candidate order
            vectors.append(np.asarray(vector, np.float32)[None])
            for k in shards_lib.META_KEYS:
                meta[k].append(index if k == "cell_id" else info[k])
        shards_lib.write_shard(gallery, shard, shards_lib.pack(vectors, meta, skipped), header)
        return shard

    with beam.Pipeline(options=PipelineOptions(argv)) as p:
        records = (p | "Shards" >> beam.Create(list(shards))
                   | "ReadCells" >> beam.FlatMap(_read_shard, description, shard_size, candidates, cell_px))
        cells = records | "Cells" >> beam.Filter(lambda r: r[0] == "cell")
        skips = (records | "Skips" >> beam.Filter(lambda r: r[0] == "skip")
                 | "SkipByShard" >> beam.Map(lambda r: (r[1], ("skip", r[2]))))
        embedded = (cells | "Key" >> beam.Map(lambda r: (r[1], r[2]))
                    | "Embed" >> RunInference(handler)
                    | "ByShard" >> beam.Map(lambda kv: (kv[0][0], ("cell", (kv[0][1], kv[0][2],
                                                                            kv[1].inference)))))
        _ = ((embedded, skips) | beam.Flatten() | "GroupShard" >> beam.GroupByKey() | "Write" >> beam.Map(write))
