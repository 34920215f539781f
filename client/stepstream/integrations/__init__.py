"""Framework integrations, each behind its own extra and imported only when used:

- `stepstream.integrations.lightning.StepstreamLogger` (`pip install 'stepstream[lightning]'`)
- `stepstream.integrations.transformers.StepstreamCallback`
  (`pip install 'stepstream[transformers]'`; also `report_to="stepstream"`)
"""
