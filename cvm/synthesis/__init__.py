"""Cross-view image synthesis as a whole: the method table and the use of a trained run.

The synthesis stack, in the order the data flows (each part beside its retrieval counterpart):

  cvm/data/synthesis/         presets, records, adapters, image ops, loader, tf.data pipeline
  cvm/models/synthesis/       generators, discriminators, generation (the test-time mode)
  cvm/training/synthesis_config.py   SynthesisConfig (the run's settings, config.json)
  cvm/training/gan.py         GANSteps (the D / G updates) and SynthesisRun (on cvm.training.epochs)
  cvm/synthesis/methods.py    SYNTHESIS_METHODS: the one table of methods (light: no TensorFlow)
  cvm/synthesis/inference.py  load_generators, synthesize (`cvm synthesize`)
  cvm/evaluation/synthesis.py the synthesis metrics (`cvm eval-synthesis`)

Importing this package does not import TensorFlow; `cvm.synthesis.inference` does.
"""

from cvm.synthesis.methods import SYNTHESIS_METHODS, SynthesisMethod, is_synthesis_method, synthesis_method

__all__ = ["SYNTHESIS_METHODS", "SynthesisMethod", "is_synthesis_method", "synthesis_method"]
