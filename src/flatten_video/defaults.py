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

#: Wan 2.1 T2V 1.3B (docs/architecture.md, "Backbones: Wan"): its training size and length (81
#: source frames at 832x480, 16 fps; sides multiples of 16), the guidance of its model card, and
#: FlowEdit's steps: the first 15 of 50 skipped, none sampled plainly, one noise a step, the
#: source velocity at guidance 3. Windows count source frames (4k+1) and overlaps multiples of 4.
WAN = dict(
    num_frames=81, height=480, width=832, fps=16, num_inference_steps=50, guidance_scale=5.0,
    method="flowedit", window=81, overlap=8, anchors=2, inject_steps=40, n_max=35, n_min=0, n_avg=1,
    source_guidance_scale=3.0, max_sequence_length=512,
)
