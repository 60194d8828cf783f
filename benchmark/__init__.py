"""The benchmark's machinery, by concern; each folder is a layer and imports only the layers below it.

    ground floor   config, schema_messages, cli, artifacts, contract, drawing
    data/          synthetic generator, real-data loaders (real/), splits, the prepared arrays, the prepare stage
    nn/            what methods build from: networks, losses, box-derived targets
    methods/       (its own package, beside this one) one file per method, the method contract
    training/      the trainer above the methods: batches, runtime settings, the train stage
    evaluation/    metrics, the evaluate stage, the statistics of paired comparisons
    reporting/     the report stage: summary, tables, claims, figures, the paper's numbers
    tools/         studies, held-out scoring, the launcher, benchmarks of speed

`python -m benchmark <command>` runs any stage or tool (benchmark/__main__.py lists them).
tests/test_layers.py holds the direction: no module imports a layer above its own, and no circle.
"""
