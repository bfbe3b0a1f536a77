"""What the notebooks add on top of the experiments: presets, parameters -> configs, sliders, live output."""
