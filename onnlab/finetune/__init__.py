"""Post-fabrication compensation of the digital backend (issue 7; paper stage 3, Table 4).

- `onnlab.finetune.compensate`: no compensation / end-to-end / NTKD on captured features,
  optics frozen and fingerprinted (bit-identical before and after).
- `onnlab.finetune.sim.run_sim`: `onnlab finetune --sim`, the main demo (simulated
  fabrication -> calibration -> capture -> fine-tuning -> report).
- `onnlab.finetune.lab.run_lab`: the same on capture stores from a real bench.
- `onnlab.finetune.config`: experiment configs (`configs/experiments/<task>.yaml`).
- `onnlab.finetune.report`: results JSON, Markdown table, plots.
"""
