"""From finished runs to the paper: tables, figures (and the mask-heatmap callback that draws
them during validation), compute profiles, W&B dashboards and run readers."""
