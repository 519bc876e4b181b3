"""The paper's defaults (official code, docs/architecture.md "The method"), written once: the
config, the pipelines' keyword arguments and the settings schema read them from here. Imports
nothing, so the command line's ``--help`` reads them at once."""

#: Source frames edited (32 in the paper's evaluation).
NUM_FRAMES = 32
#: DDIM sampling steps, DDIM inversion steps, and sampling steps that get the source features.
NUM_INFERENCE_STEPS = 50
NUM_INVERSION_STEPS = 100
INJECT_STEPS = 40
#: Classifier-free guidance scale and DDIM eta of sampling.
GUIDANCE_SCALE = 10.0
ETA = 0.0
#: The official code's seed.
SEED = 66
#: Self-attention mode and flow-guided attention variant (:mod:`flatten_video.choices`).
ATTENTION_MODE = "dsta+flatten"
VARIANT = "II"
#: Long clips (co-denoising windows): source frames per window, frames shared by neighbours,
#: frames spread over the clip that join every window.
WINDOW = 32
OVERLAP = 8
ANCHORS = 2
#: How an edit starts (:data:`flatten_video.choices.METHODS`): the paper's DDIM inversion.
METHOD = "inversion"
#: The prompt the source is inverted with: the paper inverts with the empty prompt (no caption).
SOURCE_PROMPT = ""
