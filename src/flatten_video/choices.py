"""The named choices of the method and the app, importable without torch: what the settings
schema, the command line and the web page offer (``flatten-video --help`` reads them without
loading any library). The modules that implement each choice import its names from here."""

#: Optical flow estimators (:mod:`flatten_video.flow`): RAFT (pretrained weights) or OpenCV's DIS.
FLOW_METHODS = ("raft", "dis")

#: Self-attention of the inflated U-Net, for the paper's ablations (Table 2):
#: ``spatial`` is the image model (per-frame attention), ``dsta`` dense spatio-temporal
#: attention, ``flatten`` per-frame attention followed by flow-guided attention, and
#: ``dsta+flatten`` the full method.
ATTENTION_MODES = ("spatial", "dsta", "flatten", "dsta+flatten")
#: The modes that run flow-guided attention, and so need optical flow and trajectories.
FLOW_GUIDED_MODES = ("flatten", "dsta+flatten")

#: How flow-guided attention gets its query and key (paper, Sec. 4.4): ``II`` uses the dense
#: attention's output H as query, key and value; ``I`` re-projects H through to_q/to_k/to_v;
#: ``source-qk`` uses the block's own query and key with value H.
FLATTEN_VARIANTS = ("II", "I", "source-qk")

#: How the source features are held between inversion and sampling (:mod:`flatten_video.models.features`).
FEATURE_MODES = ("stored", "recompute", "auto")

#: Editing methods (:mod:`flatten_video.pipelines.methods`, which registers one for each name and
#: sampler): inversion of the source plus injection (the paper; DDIM inversion on Stable Diffusion,
#: ODE inversion on flow models), ControlVideo's noise, the same for every frame or the same along
#: every trajectory (Stable Diffusion), or FlowEdit (flow models: Wan).
METHODS = ("inversion", "noise", "trajectory-noise", "flowedit")
#: The methods whose start is an inversion that sampling injects source features from, so that
#: inversion steps and injected steps apply.
INJECTING_METHODS = ("inversion",)
#: The options (pipeline keyword arguments) only one method reads: another method refuses them.
METHOD_OPTIONS = {
    "inversion": ("num_inversion_steps", "inject_steps"),
    "flowedit": ("n_max", "n_min", "n_avg", "source_guidance_scale"),
}

#: ControlNet condition kinds (:mod:`flatten_video.control_maps`).
CONTROL_KINDS = ("canny", "depth", "hed", "lineart", "openpose")
