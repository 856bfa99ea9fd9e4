"""Base models (Stable Diffusion checkpoints), one job per module.

- `header`: a `.safetensors` file's tensor names, shapes and metadata, read without loading a weight;
- `hashes`: the WebUI's model hashes of a checkpoint file;
- `family`: what a file or folder is (SD1.5 / SDXL, inpainting or not, single file or diffusers folder);
- `configs`: the diffusers configs of a single file: shipped ones for the known layouts, else inferred;
- `keymap`: the names diffusers' weights have in the WebUI's single-file (LDM) layout;
- `loading`: a checkpoint loaded offline into pipeline components.

Writing single files is not part of loading: it lives in `portrait_core.models.export`.
"""
