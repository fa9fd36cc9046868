"""Run settings <-> absl flags, in the library: the flag tables of `cvm train` (retrieval and synthesis), flagfiles
written and read back, and the check that refuses a flag with no effect. The CLI verbs and the pipelines
(which parse their stages' flagfiles) both use them; nothing here imports cvm.cli.

  table       config fields <-> flags by kind (str, int, float, bool, size, enum)
  train       the retrieval run's flags (TrainConfig; the model options come from the models' constructors)
  synthesis   the synthesis GANs' flags (SynthesisConfig)
  use         flags that would have no effect are errors
"""
