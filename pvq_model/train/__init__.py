"""Training (layer 3): the DeepSpeed ZeRO-3 trainer (:mod:`.loop`: :mod:`.setup`, :mod:`.step`,
:mod:`.checkpoint`, :mod:`.tracking`; :mod:`.ema`, :mod:`.ds_config`, :mod:`.data`) and the plain
PyTorch loop it shares its generator step with (:mod:`.fit`, :mod:`.augment`).

The only package that imports DeepSpeed. Nothing is imported here, so ``import pvq_model.train.fit``
loads no DeepSpeed (only :mod:`.loop`, :mod:`.setup`, :mod:`.step` and the EMA's gather do).
"""
