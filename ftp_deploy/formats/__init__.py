"""What the stages hand each other, as typed and versioned records with one reader each (torch-free):

- `routed_config`: ftp_config.json, a routed model besides its router weights (train -> everything);
- `run_state`: run.json, a training run's settings and progress (train, its resume, its report);
- `export_manifest`: manifest.json, an exported artifact and the sha256 of its files (export -> engines,
  verify, generate);
- `plan_manifest`: model.plan.json, a built TensorRT plan;
- `eval_results`: results.json of `ftp-deploy eval`;
- `verify_report`: report.json of `ftp-deploy verify`;
- `record`: the one serde they share (dataclasses to JSON and back), and `Document`, a record that is a file.
"""
