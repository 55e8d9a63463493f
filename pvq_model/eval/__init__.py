"""Evaluation and reports (layer 4, above the model core and the trainer): reconstruct clips in
bounded memory (:mod:`.stream`, :mod:`.video_io`), measure them (:mod:`.evaluate`, :mod:`.summary`)
against information-equivalent baselines (:mod:`.naive`) and peer autoencoders (:mod:`.baselines`),
and write tables (:mod:`.tables`), curves (:mod:`.curves`), HTML reports (:mod:`.report`) and the
Table-1 ablation (:mod:`.ablate`). The models it loads come from :mod:`.models`.

Nothing is imported here: ``import pvq_model.eval.tables`` loads no torch.
"""
