"""One runner per experiment, taking plain configs: cvfp (one run, baselines), scaling, phase1_grid, dist_reg_study
(on the study engine: study, study_contract, study_storage, study_outputs), advanced_training, sweeps."""
