"""Released-weight converters, one module per source layout: read safetensors (or
weights-only state dicts), never pickled objects; write tessera checkpoints and pipeline
folders.

- :mod:`~tessera.convert.clip`: transformers and open_clip CLIP (+ OpenAI's BPE tokenizer);
- :mod:`~tessera.convert.karlo`: kakaobrain's Karlo unCLIP in diffusers' folder layout.
- :mod:`~tessera.convert.vqgan`: taming-transformers and diffusers ``VQModel`` VQGANs;
- :mod:`~tessera.convert.rudalle`: Sber's ruDALL-E (transformer, Gumbel VQGAN, YouTokenToMe BPE).

The dVAE of OpenAI's ``dall-e`` package converts in :mod:`tessera.vae.convert`.
"""
