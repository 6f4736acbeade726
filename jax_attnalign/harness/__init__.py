"""The experiment harness: victims, the attack x defense pipeline, experiment configs.

Not the method: these train backdoored victims (`victims`, `victims_lm`), run a
defense on them and measure it (`pipeline`, `pipeline_lm`), build the binaries'
ml_collections configs (`configs`) and write their summaries (`reporting`). Data
paths are relative to the data root (`jax_attnalign.data.resolve_data_path`). The library core (models,
analysis, defense, attacks, data, train, metrics) never imports from here.
"""
