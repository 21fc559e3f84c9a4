"""The typed experiment spec: one dataclass per section of TAO's RT-DETR spec.

Field names, defaults, ranges, options and AutoML flags follow the reference documentation's
tables (where its example spec disagrees, the table wins); fields that TAO has but does not
document follow TAO's behaviour. Every deliberate difference carries a ``note``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtdetr.config.fields import INF, MISSING_VALUE, spec_field

ACTIVATIONS = ("relu", "gelu", "silu", "leaky_relu", "hardswish", "mish", "tanh", "sigmoid", "identity")

DOCUMENTED_BACKBONES = (
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge",
    "fan_tiny", "fan_small", "fan_base", "fan_large",
    "resnet_18", "resnet_34", "resnet_50", "resnet_101",
    "convnextv2_nano", "convnextv2_tiny", "convnextv2_base", "convnextv2_large", "convnextv2_huge",
)  # fmt: skip
VD_BACKBONES = ("resnet_18vd", "resnet_34vd", "resnet_50vd", "resnet_101vd")
# TAO's schema lists EfficientViT (its documentation's table does not); TAO registers the FAN names with
# their depth and patch size, and timm has the smaller and larger ConvNeXt-V2 variants
MORE_BACKBONES = (
    "efficientvit_b0", "efficientvit_b1", "efficientvit_b2", "efficientvit_b3",
    "efficientvit_l0", "efficientvit_l1", "efficientvit_l2", "efficientvit_l3",
    "fan_tiny_8_p4_hybrid", "fan_small_12_p4_hybrid", "fan_base_12_p4_hybrid", "fan_large_12_p4_hybrid",
    "fan_base_16_p4_hybrid", "fan_large_16_p4_hybrid",
    "convnextv2_atto", "convnextv2_femto", "convnextv2_pico", "convnextv2_small",
)  # fmt: skip

# Practical bounds (limit_min / limit_max) where TAO documents none or infinity: what a real model
# reaches and a machine holds, so that a typo fails at validation rather than hours into a run.
EPOCHS_LIMIT = 100_000
STEPS_LIMIT = 1_000_000_000
DEPLOY_BATCH_LIMIT = 256
OPSET_LIMIT = 100
OPSET_NOTE = "At most 100 here (export takes 16 up to the newest opset of the installed torch)."
SIZE_NOTE = "Sizes 32..8192 here, multiples of 32."


# ---------------------------------------------------------------------------------------- wandb
@dataclass
class WandbConfig:
    """Weights & Biases logging (off by default: nothing may need a network by default)."""

    enable: bool = spec_field(False, "Log the run to Weights & Biases.")
    project: str = spec_field("rtdetr", "wandb project name.")
    entity: str | None = spec_field(None, "wandb entity (user or team).")
    name: str | None = spec_field(None, "Run name; by default wandb picks one.")
    tags: list[str] = spec_field([], "Tags attached to the run.")
    run_id: str | None = spec_field(None, "Id of a run to resume.")
    save_code: bool = spec_field(False, "Save the code of the run to wandb.")
    sync_tensorboard: bool = spec_field(False, "Also sync the TensorBoard logs.")
    reinit: bool = spec_field(False, "Allow several runs in one process.")
    mode: str = spec_field(
        "online",
        "online logs to the server; offline writes locally (sync later with `wandb sync`); disabled.",
        valid_options=("online", "offline", "disabled"),
        note="Not in TAO; offline mode works without a network.",
    )


# ---------------------------------------------------------------------------------------- model
@dataclass
class FrozenFMConfig:
    """The frozen foundation model of Frozen RT-DETR (RT-DETR + a frozen foundation model)."""

    enabled: bool = spec_field(
        False,
        "Flag to set frozen foundation model as enabled or disabled. When set to True, the frozen "
        "foundation model will be enabled.",
        note="The table's default column says True; TAO's example spec and behaviour have it off.",
    )
    backbone: str = spec_field(
        "radio_v2-l", "Name of the frozen foundation model.",
        valid_options=("radio_v2-b", "radio_v2-l", "radio_v2-h"),
    )  # fmt: skip
    checkpoint: str | None = spec_field(
        None, "The path to the pretrained frozen foundation model checkpoint.",
        note="A C-RADIOv2 .safetensors or .pth file the user supplies (docs/frozen_fm.md); with frozen_fm "
        "the training and evaluation sizes must be multiples of 64.",
    )  # fmt: skip


@dataclass
class ModelConfig:
    """Configurable parameters to construct the model for a RT-DETR experiment."""

    pretrained_backbone_path: str | None = spec_field(None, "[Optional] Path to a pretrained backbone file.")
    backbone: str = spec_field(
        "resnet_50",
        "Backbone name of the model. TAO implementation of RT-DETR support ResNet, EfficientViT, FAN, "
        "and ConvNext v1/v2.",
        valid_options=DOCUMENTED_BACKBONES + VD_BACKBONES + MORE_BACKBONES,
        note="Adds resnet_18vd/34vd/50vd/101vd (the backbones of the published RT-DETR checkpoints), "
        "efficientvit_b0-b3/l0-l3 (in TAO's schema), TAO's registered FAN names (fan_tiny_8_p4_hybrid ...) "
        "and ConvNeXt-V2 atto/femto/pico/small; docs/backbones.md lists them all.",
    )
    train_backbone: bool = spec_field(
        True,
        "Flag to set backbone weights as trainable or frozen. When set to False, the backbone weights "
        "are frozen.",
    )
    num_queries: int = spec_field(
        300, "Number of queries.", valid_min=1, valid_max=INF, automl=True, limit_max=5000,
        note="At most 5000 here: the decoder's self-attention grows with its square.",
    )  # fmt: skip
    num_select: int = spec_field(
        300, "Number of top-K predictions selected during post-processing.", valid_min=1, automl=True,
        limit_max=100_000, note="At most 100000 here (and at most num_queries x num_classes).",
    )  # fmt: skip
    num_feature_levels: int = spec_field(
        3, "Number of feature levels to use in the model.", valid_min=1, valid_max=4
    )
    return_interm_indices: list[int] = spec_field(
        [1, 2, 3],
        "Index of feature levels to use in the model. The length must match num_feature_levels.",
        limit_min=0, limit_max=3, note="Items are backbone stages 0..3 (strides 4..32).",
    )  # fmt: skip
    feat_strides: list[int] = spec_field(
        [8, 16, 32], "Stride used as grid size of positional embedding at each encoder layer.",
        limit_min=1, limit_max=128, note="Items 1..128 here (the backbone's strides are 4..32).",
    )  # fmt: skip
    feat_channels: list[int] = spec_field(
        [256, 256, 256], "Feature channel sizes in decoder.", limit_min=1, limit_max=4096,
        note="Items 1..4096 here, as the encoder width.",
    )  # fmt: skip
    use_encoder_idx: list[int] = spec_field(
        [2], "Index of multi-scale backbone features to pass to encoder.", limit_min=0, limit_max=3,
        note="Items index the feature levels, 0..3.",
    )  # fmt: skip
    hidden_dim: int = spec_field(
        256, "Dimension of the hidden units.", valid_min=1, limit_max=4096,
        note="At most 4096 here; divisible by nheads (and, as the encoder width, by 4).",
    )  # fmt: skip
    nheads: int = spec_field(8, "Number of heads.", valid_min=1, limit_max=64, note="At most 64 here.")
    dropout_ratio: float = spec_field(0.0, "Probability to drop hidden units.", valid_min=0.0, valid_max=1.0)
    enc_layers: int = spec_field(
        1, "Number of encoder layers in the transformer.", valid_min=1, automl=True, limit_max=32,
        note="At most 32 here.",
    )  # fmt: skip
    dim_feedforward: int = spec_field(
        1024,
        "Dimension of the feedforward network.",
        valid_min=1,
        limit_max=16384,
        note="At most 16384 here.",
    )
    pe_temperature: int = spec_field(
        10000, "Temperature applied to the positional sine embedding.", valid_min=1, valid_max=INF,
        limit_max=1_000_000, note="At most 1000000 here (the embedding is computed in float32).",
    )  # fmt: skip
    expansion: float = spec_field(
        1.0, "Expansion raito for hidden dimension used in CSPRepLayer.",
        value_type="int", valid_min=0.0, valid_max=INF, limit_max=8.0,
        note="Fractional values (0.5 for r18/r34) are accepted, as in the original RT-DETR. Above 0 and "
        "at most 8 here: the CSP width int(encoder width x expansion) must be at least 1.",
    )  # fmt: skip
    depth_mult: float = spec_field(
        1, "Number of RegVGGBlock used in CSPRepLayer.", value_type="int", valid_min=1, valid_max=INF,
        limit_max=10.0, note="At most 10 here (round(3 x depth_mult) blocks per CSP layer).",
    )  # fmt: skip
    enc_act: str = spec_field("gelu", "Activation used for the encoder.", valid_options=ACTIVATIONS)
    act: str = spec_field(
        "silu", "Activation used for top-down FPN and bottom-up PAN.", valid_options=ACTIVATIONS
    )
    dec_layers: int = spec_field(
        6, "Number of decoder layers in the transformer.", valid_min=1, automl=True, limit_max=32,
        note="At most 32 here.",
    )  # fmt: skip
    dn_number: int = spec_field(
        100, "Number of denoising queries.", valid_min=0, valid_max=INF, limit_max=1000,
        note="At most 1000 here: the denoising groups join the decoder's self-attention.",
    )  # fmt: skip
    eval_idx: int = spec_field(
        -1,
        "Index of decoder layer to use for evaluation. By default, use the last decoder layer.",
        valid_min=-1, valid_max=INF, limit_max=31, note="Below dec_layers (at most 32 here).",
    )  # fmt: skip
    encoder_hidden_dim: int | None = spec_field(
        None,
        "Width of the hybrid encoder; null uses hidden_dim (RT-DETR r101 uses 384 with a 256 decoder).",
        valid_min=1, limit_max=4096,
        note="Not in TAO: lets the r101 variant and converted checkpoints be described. At most 4096, "
        "divisible by nheads and by 4.",
    )  # fmt: skip
    dec_dim_feedforward: int = spec_field(
        1024, "Dimension of the decoder's feedforward network.", valid_min=1, limit_max=16384,
        note="Not in TAO. At most 16384.",
    )  # fmt: skip
    dec_act: str = spec_field(
        "relu",
        "Activation of the decoder's feedforward network.",
        valid_options=ACTIVATIONS,
        note="Not in TAO.",
    )
    num_points: int = spec_field(
        4, "Sampling points per head and level in deformable attention.", valid_min=1, limit_max=32,
        note="Not in TAO. At most 32.",
    )  # fmt: skip
    label_noise_ratio: float = spec_field(
        0.5, "Label noise of the denoising queries.", valid_min=0.0, valid_max=1.0, note="Not in TAO."
    )
    box_noise_scale: float = spec_field(
        1.0, "Box noise scale of the denoising queries.", valid_min=0.0, note="Not in TAO."
    )
    freeze_norm: bool | None = spec_field(
        None,
        "Freeze the backbone's BatchNorm statistics and affine parameters; null uses the backbone's "
        "own default (frozen for resnet_50vd/101vd, as in the original RT-DETR).",
        note="Not in TAO.",
    )
    pe_order: str = spec_field(
        "w_major",
        "Token order of the encoder's 2-D position embedding: w_major as the original RT-DETR and TAO, "
        "h_major as transformers 5 (the two differ only on non-square feature maps).",
        valid_options=("w_major", "h_major"),
        note="Not in TAO: needed to reproduce checkpoints converted from transformers.",
    )
    vfl_loss_coef: float = spec_field(
        1.0, "Relative weight of the varifocal error in the matching cost.", valid_min=0.0, valid_max=INF
    )
    bbox_loss_coef: float = spec_field(
        5.0,
        "Relative weight of the L1 error of the bounding box coordinates in the matching cost.",
        valid_min=0.0, valid_max=INF,
    )  # fmt: skip
    giou_loss_coef: float = spec_field(
        2.0,
        "The relative weight of the GIoU loss of the bounding box in the matching cost.",
        valid_min=0.0, valid_max=INF,
    )  # fmt: skip
    alpha: float = spec_field(0.75, "Alpha value in the varifocal loss.")
    gamma: float = spec_field(2.0, "Gamma value in the varifocal loss.")
    class_cost: float = spec_field(
        2.0, "Weight of the classification cost in the Hungarian matcher.", valid_min=0.0
    )
    bbox_cost: float = spec_field(5.0, "Weight of the L1 box cost in the Hungarian matcher.", valid_min=0.0)
    giou_cost: float = spec_field(2.0, "Weight of the GIoU cost in the Hungarian matcher.", valid_min=0.0)
    clip_max_norm: float = spec_field(
        0.1,
        "Accepted for compatibility with TAO specs that carry it in a model section; gradient "
        "clipping is set by train.clip_grad_norm.",
        valid_min=0.0,
    )
    aux_loss: bool = spec_field(
        True,
        "A flag specifying whether to use auxiliary decoding losses (loss at each decoder layer).",
        note="false really turns the auxiliary losses off (TAO keeps them).",
    )
    loss_types: list[str] = spec_field(
        ["vfl", "boxes"], "Losses to be used during training.", valid_options=("vfl", "boxes")
    )
    backbone_names: list[str] = spec_field(
        ["backbone.0"], "Prefix of the tensor names corresponding to the backbone."
    )
    linear_proj_names: list[str] = spec_field(
        ["reference_points", "sampling_offsets"], "Linear projection layer names."
    )
    distillation_loss_coef: float = spec_field(
        1.0, "Coefficient for the distillation loss during distillation.", valid_min=0.0,
        note="Applied (TAO never applies it): total = detection losses + coef x sum of the weighted "
        "binding losses.",
    )  # fmt: skip
    load_teacher_enc_dec: bool = spec_field(
        False,
        "Distill only: before training, copy the teacher's encoder and decoder tensors whose names and "
        "shapes match into the student.",
        note="Undocumented in TAO (true in its sample distill spec); read by distill only.",
    )
    frozen_fm: FrozenFMConfig = spec_field(
        FrozenFMConfig, "Configurable parameters used to construct the frozen foundation model."
    )


# -------------------------------------------------------------------------------------- dataset
@dataclass
class DataSource:
    """A folder of images and its COCO JSON annotation file."""

    image_dir: str = spec_field("", "Directory that contains the images.")
    json_file: str = spec_field("", "Path of the JSON file, in COCO format.")


@dataclass
class InferDataSource:
    """The images to run inference on, and the class names."""

    image_dir: list[str] = spec_field(
        [""], "List of directories that contains the inference images (files and globs too)."
    )
    classmap: str = spec_field("", "Path of the .txt file that contains class names, one per line.")


@dataclass
class AugmentationConfig:
    """Configuration parameters for data augmentation."""

    multi_scales: list[int] = spec_field(
        [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],
        "A list of sizes to perform random resize.",
        limit_min=32, limit_max=8192, note=SIZE_NOTE,
    )  # fmt: skip
    train_spatial_size: list[int] = spec_field(
        [640, 640], "Input resolution to run evaluation during training. This is in the [h, w] order.",
        limit_min=32, limit_max=8192, note=SIZE_NOTE,
    )  # fmt: skip
    eval_spatial_size: list[int] = spec_field(
        [640, 640],
        "Input resolution to run evaluation during validation and testing. This is in the [h, w] order.",
        limit_min=32, limit_max=8192, note=SIZE_NOTE,
    )  # fmt: skip
    distortion_prob: float = spec_field(
        0.8, "The probability for RandomPhotometricDistort", valid_min=0.0, valid_max=1.0, automl=True
    )
    iou_crop_prob: float = spec_field(
        0.8, "The probability for RandomIoUCrop", valid_min=0.0, valid_max=1.0, automl=True
    )
    preserve_aspect_ratio: bool = spec_field(False, "Flag to enable resize with preserving the aspect ratio.")


@dataclass
class DatasetConfig:
    """Configurable parameters to construct the dataset for a RT-DETR experiment."""

    train_data_sources: list[DataSource] = spec_field(
        [DataSource()], "The list of data sources for training.", value_type="list"
    )
    val_data_sources: DataSource = spec_field(DataSource, "The data source for validation.")
    test_data_sources: DataSource = spec_field(DataSource, "The data source for testing.")
    infer_data_sources: InferDataSource = spec_field(InferDataSource, "The data source for inference.")
    batch_size: int = spec_field(
        4, "Batch size for training and validation.", valid_min=1, valid_max=INF, automl=True,
        limit_max=1024, note="At most 1024 (per GPU) here.",
    )  # fmt: skip
    workers: int = spec_field(
        8, "Number of parallel workers processing data.", valid_min=0, valid_max=INF, automl=True,
        limit_max=256, note="valid_min is 0 here (TAO: 1): 0 loads data in the main process. At most 256.",
    )  # fmt: skip
    remap_mscoco_category: bool = spec_field(
        False,
        "Enables mapping of MSCOCO 91 classes to 80. Only required if you are directly training "
        "using the original COCO annotation files. For a custom dataset, set this value to False.",
    )
    pin_memory: bool = spec_field(
        True,
        "Enables the dataloader to allocate pagelocked memory for faster data transfer between the "
        "CPU and GPU.",
    )
    dataset_type: str = spec_field(
        "serialized",
        "default loads the COCO annotations in every loader worker; serialized packs them once and "
        "shares them across workers, which keeps RAM low when workers is high.",
        valid_options=("serialized", "default"),
    )
    num_classes: int = spec_field(
        80, "The number of classes in the training data", valid_min=1, valid_max=INF, limit_max=100_000,
        note="At most 100000 here.",
    )  # fmt: skip
    eval_class_ids: list[int] | None = spec_field(
        None,
        "IDs of the classes for evaluation; null evaluates every class.",
        limit_min=0, limit_max=2**31 - 1,
        note="The table's default is [1], which TAO applies only in its TensorRT path; here the "
        "default null evaluates all classes, as TAO's PyTorch path does. Ids are 0..2^31-1.",
    )  # fmt: skip
    augmentation: AugmentationConfig = spec_field(
        AugmentationConfig, "Configuration parameters for data augmentation"
    )


# ---------------------------------------------------------------------------------------- train
@dataclass
class CudnnConfig:
    """cuDNN flags."""

    benchmark: bool = spec_field(False, "Let cuDNN pick the fastest kernels (non-deterministic).")
    deterministic: bool = spec_field(True, "Ask cuDNN for deterministic kernels.")


@dataclass
class EMAConfig:
    """Hyper parameters to configure the Exponential Moving Average."""

    decay: float = spec_field(
        0.999, "EMA decay d: after each optimizer step ema = d * ema + (1 - d) * w.",
        valid_min=0.0, valid_max=1.0, automl=True,
    )  # fmt: skip
    every_n_steps: int = spec_field(
        1, "Update the EMA every n optimizer steps.", valid_min=1, limit_max=1_000_000,
        note="At most 1000000 here.",
    )  # fmt: skip
    validate_original_weights: bool = spec_field(
        False, "Validate with the raw weights instead of the EMA weights."
    )
    cpu_offload: bool = spec_field(False, "Keep the EMA weights in CPU memory.")


@dataclass
class OptimConfig:
    """Hyper parameters to configure the optimizer."""

    optimizer: str = spec_field(
        "AdamW", "Type of optimizer used to train the network.", valid_options=("AdamW", "SGD"),
        note="SGD (rejected by TAO) works, with momentum.",
    )  # fmt: skip
    monitor_name: str = spec_field(
        "val_loss", "The metric value to be monitored for the AutoReduce Scheduler",
        valid_options=("val_loss", "train_loss"),
    )  # fmt: skip
    lr: float = spec_field(
        0.0001, "The initial learning rate for training the model, excluding the backbone",
        valid_min=0.0, automl=True,
    )  # fmt: skip
    lr_backbone: float = spec_field(
        1e-05, "The initial learning rate for training the backbone", valid_min=0.0, automl=True,
        note="Applied to the backbone (TAO's parameter group matches nothing).",
    )  # fmt: skip
    lr_linear_proj_mult: float = spec_field(
        0.1,
        "Multiplier of the learning rate of the parameters whose names match model.linear_proj_names.",
        valid_min=0.0,
        note="Documented in TAO's example spec but absent from its schema; honoured here.",
    )
    momentum: float = spec_field(
        0.9, "The momentum for the AdamW optimizer", valid_min=0.0, valid_max=1.0, automl=True
    )
    weight_decay: float = spec_field(0.0001, "The weight decay coefficient", valid_min=0.0, automl=True)
    lr_scheduler: str = spec_field(
        "MultiStep",
        "The learning scheduler: MultiStep decreases the lr by lr_decay at lr_steps; StepLR decreases "
        "the lr by lr_decay at every lr_step_size.",
        valid_options=("MultiStep", "StepLR"),
    )
    lr_steps: list[int] = spec_field(
        [1000],
        "The steps at which the learning rate must be decreased. This is applicable only with the "
        "MultiStep LR.",
        limit_min=0, limit_max=STEPS_LIMIT, note="Items 0..1000000000 here.",
    )  # fmt: skip
    lr_step_size: int = spec_field(
        1000, "The number of steps to decrease the learning rate in the StepLR", valid_min=1, automl=True,
        limit_max=STEPS_LIMIT, note="At most 1000000000 here.",
    )  # fmt: skip
    lr_decay: float = spec_field(
        0.1, "The decreasing factor for the learning rate scheduler", valid_min=0.0, automl=True
    )
    warmup_steps: int = spec_field(
        0, "The number of steps to perform linear learning rate warm-up", valid_min=0, valid_max=INF,
        limit_max=STEPS_LIMIT,
        note="Honoured (TAO ignores it): a linear warm-up over optimizer steps. At most 1000000000 here.",
    )  # fmt: skip


@dataclass
class TrainConfig:
    """Configurable parameters to construct the trainer for a RT-DETR experiment."""

    num_gpus: int = spec_field(
        1, "Number of GPUs to run the training job.", valid_min=1, limit_max=1024, note="At most 1024 here."
    )
    gpu_ids: list[int] = spec_field(
        [0],
        "List of GPU IDs to run the training on. The length of this list must equal the number of "
        "GPUs in train.num_gpus.",
        limit_min=0, limit_max=1023, note="Ids 0..1023 here.",
    )  # fmt: skip
    num_nodes: int = spec_field(
        1, "Number of nodes to run the training on. If >1, multi-node is enabled.", valid_min=1,
        limit_max=1024, note="At most 1024 here.",
    )  # fmt: skip
    seed: int = spec_field(
        1234, "Seed for the initializer in PyTorch. If <0, disable fixed seed.", valid_min=-1, valid_max=INF,
        limit_max=2**32 - 1, note="At most 2^32-1 here, the largest seed numpy and Lightning take.",
    )  # fmt: skip
    cudnn: CudnnConfig = spec_field(CudnnConfig, "cuDNN flags.")
    num_epochs: int = spec_field(
        10, "Number of epochs to run the training.", valid_min=1, valid_max=INF, automl=True,
        limit_max=EPOCHS_LIMIT, note="At most 100000 here.",
    )  # fmt: skip
    checkpoint_interval: int = spec_field(
        1, "Interval (in epochs) at which a checkpoint is to be saved. Helps resume training.", valid_min=1,
        limit_max=EPOCHS_LIMIT, note="At most num_epochs.",
    )  # fmt: skip
    validation_interval: int = spec_field(
        1, "Interval (in epochs) at which a evaluation is to be triggered on the validation dataset.",
        valid_min=1, limit_max=EPOCHS_LIMIT, note="At most num_epochs.",
    )  # fmt: skip
    resume_training_checkpoint_path: str | None = spec_field(
        None, "Path to the checkpoint at which to resume training."
    )
    results_dir: str | None = spec_field(
        None, "Path to the location where all the assets generated from a task are stored."
    )
    freeze: list[str] = spec_field(
        [], 'List of layer names to freeze. Example: ["backbone", "encoder", "decoder"].'
    )
    pretrained_model_path: str | None = spec_field(
        None, "Path to a pretrained RT-DETR model to initialize the current training from."
    )
    clip_grad_norm: float = spec_field(
        0.1, "Amount to clip the gradient by L2 Norm. A value of 0.0 specifies no clipping.", valid_min=0.0
    )
    is_dry_run: bool = spec_field(
        False,
        "Whether to run the trainer in Dry Run mode: one training and one validation batch, then stop.",
    )
    enable_ema: bool = spec_field(False, "Whether to enable Exponential Moving Average during training.")
    ema: EMAConfig = spec_field(EMAConfig, "Hyper parameters to configure the Exponential Moving Average.")
    optim: OptimConfig = spec_field(OptimConfig, "Hyper parameters to configure the optimizer.")
    precision: str = spec_field(
        "fp32", "Precision to run the training on.", valid_options=("bf16", "fp32", "fp16")
    )
    distributed_strategy: str = spec_field(
        "ddp",
        "The multi-GPU training strategy. DDP (Distributed Data Parallel) and Fully Sharded DDP are "
        "supported.",
        valid_options=("ddp", "fsdp"),
    )
    activation_checkpoint: bool = spec_field(
        True,
        "Whether training is to recompute in backward pass to save GPU memory, rather than storing "
        "activations.",
    )
    verbose: bool = spec_field(
        False, "Whether to enable printing of detailed learning rate scaling from the optimizer."
    )


# ------------------------------------------------------------------------- evaluate / inference
def runtime_field():
    """evaluate.runtime and inference.runtime."""
    return spec_field(
        "auto",
        "The runtime of an ONNX file (trt_engine): onnxruntime, openvino (the CPU; an OpenVINO IR .xml "
        "always runs there), or auto: OpenVINO when it is installed and the model runs on the CPU, else "
        "ONNX Runtime.",
        valid_options=("auto", "onnxruntime", "openvino"),
        note="Not in TAO. OpenVINO is the extra `pip install 'rtdetr[openvino]'`.",
    )


@dataclass
class EvaluateConfig:
    """Configurable parameters to construct the evaluator for a RT-DETR experiment."""

    checkpoint: str = spec_field(MISSING_VALUE, "Path to the checkpoint to evaluate.")
    results_dir: str | None = spec_field(None, "Path to the location where the results are stored.")
    input_width: int | None = spec_field(
        None, "Width of the input image tensor; null uses dataset.augmentation.eval_spatial_size.",
        valid_min=1, limit_max=8192, note=SIZE_NOTE,
    )  # fmt: skip
    input_height: int | None = spec_field(
        None, "Height of the input image tensor; null uses dataset.augmentation.eval_spatial_size.",
        valid_min=1, limit_max=8192, note=SIZE_NOTE,
    )  # fmt: skip
    trt_engine: str | None = spec_field(
        None,
        "Path to an exported model (.onnx, run with ONNX Runtime or OpenVINO, an OpenVINO IR .xml, or a "
        "TensorRT .engine) to evaluate in place of the checkpoint.",
    )
    runtime: str = runtime_field()
    conf_threshold: float = spec_field(
        0.0,
        "The value of the confidence threshold to be used when filtering out the final list of boxes.",
        valid_min=0.0, valid_max=1.0,
    )  # fmt: skip


@dataclass
class InferenceConfig:
    """Configurable parameters to construct the inferencer for a RT-DETR experiment."""

    checkpoint: str = spec_field(MISSING_VALUE, "Path to the checkpoint to run.")
    results_dir: str | None = spec_field(None, "Path to the location where the results are stored.")
    trt_engine: str | None = spec_field(
        None,
        "Path to an exported model (.onnx, run with ONNX Runtime or OpenVINO, an OpenVINO IR .xml, or a "
        "TensorRT .engine) to run in place of the checkpoint.",
    )
    runtime: str = runtime_field()
    color_map: dict[str, str] = spec_field(
        {}, "Class-wise dictionary with colors (names or hex) to render boxes.", value_type="collection"
    )
    conf_threshold: float = spec_field(
        0.5,
        "The value of the confidence threshold to be used when filtering out the final list of boxes.",
        valid_min=0.0, valid_max=1.0,
    )  # fmt: skip
    is_internal: bool = spec_field(False, "Flag to render with internal directory structure.")
    input_width: int | None = spec_field(
        None, "Width of the input image tensor; null uses dataset.augmentation.eval_spatial_size.",
        valid_min=32, limit_max=8192,
        note="TAO documents 960 but ignores the field and runs at eval_spatial_size; here null does that "
        "and a set value (a multiple of 32, at most 8192) is honoured.",
    )  # fmt: skip
    input_height: int | None = spec_field(
        None, "Height of the input image tensor; null uses dataset.augmentation.eval_spatial_size.",
        valid_min=32, limit_max=8192,
        note="TAO documents 544 but ignores the field and runs at eval_spatial_size; here null does that "
        "and a set value (a multiple of 32, at most 8192) is honoured.",
    )  # fmt: skip
    outline_width: int = spec_field(
        3,
        "Width in pixels of the bounding box outline.",
        valid_min=1,
        limit_max=1000,
        note="Honoured (TAO ignores it). At most 1000.",
    )


# ------------------------------------------------------------------------ export / TensorRT
@dataclass
class ExportConfig:
    """Configurable parameters to construct the exporter for a RT-DETR experiment."""

    checkpoint: str = spec_field(MISSING_VALUE, "Path to the checkpoint file to run export.")
    onnx_file: str = spec_field(MISSING_VALUE, "Path to the onnx model file.")
    results_dir: str | None = spec_field(None, "Path to the location where the logs and status are stored.")
    on_cpu: bool = spec_field(False, "Flag to export CPU compatible model.")
    input_channel: int = spec_field(3, "Number of channels in the input Tensor.", valid_min=3, valid_max=3)
    input_width: int = spec_field(
        960, "Width of the input image tensor.", valid_min=32, limit_max=8192, note=SIZE_NOTE
    )
    input_height: int = spec_field(
        544, "Height of the input image tensor.", valid_min=32, limit_max=8192, note=SIZE_NOTE
    )
    opset_version: int = spec_field(
        17, "Operator set version of the ONNX model used to generate the TensorRT engine.", valid_min=1,
        limit_max=OPSET_LIMIT, note=OPSET_NOTE,
    )  # fmt: skip
    batch_size: int = spec_field(
        -1,
        "The batch size of the input Tensor for the engine. A value of -1 implies dynamic tensor shapes.",
        valid_min=-1, limit_max=DEPLOY_BATCH_LIMIT, note="Not 0; at most 256 here.",
    )  # fmt: skip
    verbose: bool = spec_field(False, "Flag to enable verbose TensorRT logging.")
    overwrite: bool = spec_field(
        False,
        "Replace onnx_file when it exists (otherwise an existing file is an error).",
        note="Not in TAO.",
    )
    end_to_end: bool = spec_field(
        False,
        "Put the postprocess in the graph: a second input orig_target_sizes [B, 2] (w, h) and outputs "
        "labels, boxes (xyxy pixels) and scores, the top model.num_select; for runtimes without DeepStream.",
        note="Not in TAO (its graph ends at pred_logits and pred_boxes, which stays the default).",
    )


@dataclass
class TensorRTConfig:
    """TensorRT builder settings."""

    data_type: str = spec_field("FP32", "Precision of the engine.", valid_options=("FP32", "FP16", "INT8"))
    workspace_size: int = spec_field(
        1024, "Builder workspace size in MB.", valid_min=1, limit_max=1_048_576, note="At most 1 TB here."
    )
    min_batch_size: int = spec_field(
        1, "Minimum batch size of the optimization profile.", valid_min=1, limit_max=DEPLOY_BATCH_LIMIT,
        note="At most 256 here.",
    )  # fmt: skip
    opt_batch_size: int = spec_field(
        1, "Optimal batch size of the optimization profile.", valid_min=1, limit_max=DEPLOY_BATCH_LIMIT,
        note="At most 256 here.",
    )  # fmt: skip
    max_batch_size: int = spec_field(
        4, "Maximum batch size of the optimization profile.", valid_min=1, limit_max=DEPLOY_BATCH_LIMIT,
        note="At most 256 here.",
    )  # fmt: skip
    layers_precision: list[str] = spec_field(
        [], "Per-layer precision overrides, as 'layer_name:precision' (e.g. '/decoder/Add:fp32')."
    )


@dataclass
class CalibrationConfig:
    """INT8 calibration settings."""

    cal_image_dir: list[str] = spec_field([], "Directories of calibration images.")
    cal_cache_file: str | None = spec_field(None, "Calibration cache file, written and reused.")
    cal_batch_size: int = spec_field(
        1, "Batch size of calibration.", valid_min=1, limit_max=DEPLOY_BATCH_LIMIT, note="At most 256 here."
    )
    cal_batches: int = spec_field(
        1, "Number of calibration batches.", valid_min=1, limit_max=100_000, note="At most 100000 here."
    )


@dataclass
class GenTrtEngineConfig:
    """Configurable parameters to construct the TensorRT engine builder for a RT-DETR experiment."""

    onnx_file: str = spec_field(MISSING_VALUE, "Path to the ONNX model to build the engine from.")
    trt_engine: str = spec_field(MISSING_VALUE, "Path of the TensorRT engine to write.")
    results_dir: str | None = spec_field(None, "Path to the location where the logs and status are stored.")
    timing_cache: str | None = spec_field(None, "TensorRT timing cache file, written and reused.")
    input_channel: int = spec_field(3, "Number of channels in the input Tensor.", valid_min=3, valid_max=3)
    input_width: int | None = spec_field(
        None, "Width of the input image tensor; null: the ONNX file's (which the engine is built for).",
        valid_min=32, limit_max=8192,
        note="Accepted from TAO Deploy specs; the ONNX file's fixed size is authoritative. At most 8192.",
    )  # fmt: skip
    input_height: int | None = spec_field(
        None, "Height of the input image tensor; null: the ONNX file's (which the engine is built for).",
        valid_min=32, limit_max=8192,
        note="Accepted from TAO Deploy specs; the ONNX file's fixed size is authoritative. At most 8192.",
    )  # fmt: skip
    opset_version: int = spec_field(
        17, "Operator set version of the ONNX model (informational: the ONNX file has its own).", valid_min=1,
        limit_max=OPSET_LIMIT, note=OPSET_NOTE,
    )  # fmt: skip
    batch_size: int = spec_field(
        -1, "Batch size of the engine; -1 uses the optimization profile.", valid_min=-1,
        limit_max=DEPLOY_BATCH_LIMIT, note="Not 0; at most 256 here.",
    )  # fmt: skip
    verbose: bool = spec_field(False, "Flag to enable verbose TensorRT logging.")
    tensorrt: TensorRTConfig = spec_field(TensorRTConfig, "TensorRT builder settings.")
    calibration: CalibrationConfig = spec_field(CalibrationConfig, "INT8 calibration settings.")


# ------------------------------------------------------------------------------------- quantize
@dataclass
class QuantizeConfig:
    """CPU INT8: static quantization of an exported model, calibrated on images, by ONNX Runtime or by
    NNCF for OpenVINO."""

    onnx_file: str = spec_field(MISSING_VALUE, "The exported FP32 ONNX model (from rtdetr export).")
    output_file: str = spec_field(
        MISSING_VALUE, "The INT8 model to write: an ONNX file, or with backend openvino an OpenVINO IR NAME.xml "
        "(its weights in NAME.bin beside it).",
    )  # fmt: skip
    backend: str = spec_field(
        "onnxruntime",
        "Who quantizes: onnxruntime (an INT8 ONNX file for ONNX Runtime) or openvino (NNCF; an INT8 "
        "OpenVINO IR, the fastest on Intel and AMD CPUs). calibration_method, per_channel, reduce_range "
        "and op_types are ONNX Runtime's; NNCF uses its transformer scheme.",
        valid_options=("onnxruntime", "openvino"),
        note="Not in TAO. openvino needs the extra `pip install 'rtdetr[openvino]'`.",
    )
    results_dir: str | None = spec_field(None, "Path to the location where the logs and status are stored.")
    cal_image_dir: list[str] = spec_field(
        [], "Calibration images: folders, files or glob patterns (images like those the model will see)."
    )
    cal_images: int = spec_field(
        100, "Number of calibration images (a fixed random sample when there are more).", valid_min=1,
        limit_max=1_000_000, note="At most 1000000 here.",
    )  # fmt: skip
    calibration_method: str = spec_field(
        "Percentile",
        "How activation ranges are calibrated: MinMax, Entropy, or Percentile (99.999th percentile).",
        valid_options=("MinMax", "Entropy", "Percentile"),
    )
    per_channel: bool = spec_field(True, "Quantize weights per output channel (else per tensor).")
    reduce_range: bool = spec_field(
        True,
        "Quantize weights to 7 bits. ONNX Runtime's int8 kernels for CPUs without VNNI (AVX2 only) "
        "saturate with 8-bit weights and the model's accuracy collapses there; false only for files "
        "that run on VNNI CPUs alone.",
    )
    op_types: list[str] = spec_field(
        ["Conv", "MatMul", "Gemm", "Relu", "MaxPool", "Add", "Concat", "Resize"],
        "ONNX operator types to quantize; the others stay in float.",
    )
    exclude_nodes: list[str] = spec_field(
        [], "ONNX node-name patterns (* wildcards) kept in float, e.g. '/model/decoder/*'."
    )
    overwrite: bool = spec_field(False, "Replace output_file when it exists.")


# -------------------------------------------------------------------------------------- distill
@dataclass
class DistillBinding:
    """One teacher/student module pair compared by a criterion."""

    teacher_module_name: str = spec_field("", "The name of the teacher module.")
    student_module_name: str = spec_field("", "The name of the student module.")
    criterion: str = spec_field(
        "IOU", "The criterion to use for calculating binding loss.", valid_options=("L1", "L2", "KL", "IOU")
    )
    weight: float = spec_field(1.0, "The weight of the binding loss.", valid_min=0.0)


@dataclass
class DistillConfig:
    """Configurable parameters to construct the distiller for a RT-DETR experiment."""

    teacher: ModelConfig = spec_field(
        ModelConfig, "Configurable parameters to construct the teacher model. (Same as the model config)"
    )
    pretrained_teacher_model_path: str | None = spec_field(None, "Path to the pre-trained teacher model.")
    bindings: list[DistillBinding] = spec_field(
        [],
        "The list of bindings between teacher and student to use for calculating distill loss.",
        value_type="list dict",
    )


# --------------------------------------------------------------------------------------- automl
# the fields TAO's documentation marks automl_enabled (the teacher's left out), in schema order
AUTOML_PARAMETERS = (
    "model.num_queries", "model.num_select", "model.enc_layers", "model.dec_layers", "dataset.batch_size",
    "dataset.workers", "dataset.augmentation.distortion_prob", "dataset.augmentation.iou_crop_prob",
    "train.num_epochs", "train.ema.decay", "train.optim.lr", "train.optim.lr_backbone",
    "train.optim.momentum", "train.optim.weight_decay", "train.optim.lr_step_size", "train.optim.lr_decay",
)  # fmt: skip
AUTOML_ALGORITHMS = ("bayesian", "bohb", "hyperband", "asha", "pbt")
AUTOML_METRICS = ("val_mAP50", "val_mAP", "val_loss", "train_loss")
AUTOML_NOTE = "Not in TAO's RT-DETR spec (TAO's AutoML settings belong to its service's jobs)."


@dataclass
class AutomlRange:
    """A searched field's own range or values, in place of the schema's."""

    parameter: str = spec_field(
        "", "The field, one of automl.parameters.", valid_options=("",) + AUTOML_PARAMETERS
    )
    min: float | None = spec_field(None, "The lowest value (default: from the schema).")
    max: float | None = spec_field(None, "The highest value (default: from the schema).")
    log: bool | None = spec_field(
        None, "Sample on a log scale (default: the learning rates and the weight decay are)."
    )
    values: list[float] = spec_field([], "Sample one of these values instead of a range.")


@dataclass
class AutomlConfig:
    """`rtdetr automl`: a search over the automl_enabled fields (Optuna); see docs/automl.md."""

    algorithm: str = spec_field(
        "bayesian",
        "bayesian (Gaussian process), bohb (multivariate TPE + Hyperband), hyperband (random + "
        "Hyperband), asha (random + asynchronous successive halving) or pbt (population-based training).",
        valid_options=AUTOML_ALGORITHMS, note=AUTOML_NOTE,
    )  # fmt: skip
    metric: str = spec_field(
        "val_mAP50", "The epoch metric trials are judged by: mAP values are maximised, losses minimised.",
        valid_options=AUTOML_METRICS,
    )  # fmt: skip
    max_trials: int = spec_field(
        10, "Trials that end complete or pruned.", valid_min=1, limit_max=10_000, note="At most 10000 here."
    )
    max_concurrent: int = spec_field(
        1, "Trials run at once.", valid_min=1, limit_max=256, note="At most 256 here."
    )
    max_epochs: int = spec_field(
        10, "Epochs of a trial (caps a sampled train.num_epochs); the pruners' largest budget.", valid_min=1,
        limit_max=100_000, note="At most 100000 here.",
    )  # fmt: skip
    reduction_factor: int = spec_field(
        3, "Hyperband's and ASHA's reduction factor: of every N trials reaching a budget, one goes on.",
        valid_min=2, limit_max=100, note="At most 100 here.",
    )  # fmt: skip
    seed: int | None = spec_field(
        None, "The sampler's seed (null: a random one).", valid_min=0, limit_max=2**32 - 1,
        note="At most 4294967295 here.",
    )  # fmt: skip
    parameters: list[str] = spec_field(
        [], "The fields to search (default: all automl_enabled fields).", valid_options=AUTOML_PARAMETERS
    )
    ranges: list[AutomlRange] = spec_field(
        [], "Per-field ranges or values in place of the schema's.", value_type="list dict"
    )
    storage: str | None = spec_field(
        None, "SQLAlchemy URL of the study's database (shared by several machines); default: SQLite in "
        "the results folder.",
    )  # fmt: skip
    study_name: str = spec_field("rtdetr_automl", "The study's name in its database.")
    population_size: int = spec_field(
        4, "pbt: members trained side by side.", valid_min=2, limit_max=256, note="At most 256 here."
    )
    eval_interval: int = spec_field(
        2, "pbt: epochs between two exploit-and-explore steps.", valid_min=1, limit_max=100_000,
        note="At most 100000 here.",
    )  # fmt: skip
    results_dir: str | None = spec_field(None, "Path to the location where the search writes.")


# ------------------------------------------------------------------------------------ top level
@dataclass
class ExperimentConfig:
    """A RT-DETR experiment spec."""

    encryption_key: str | None = spec_field(
        None, "Key of encrypted models (unused: models are not encrypted)."
    )
    results_dir: str = spec_field("/results", "Folder under which each task writes <results_dir>/<task>.")
    wandb: WandbConfig = spec_field(WandbConfig, "Weights & Biases logging.")
    model: ModelConfig = spec_field(
        ModelConfig, "Configurable parameters to construct the model for a RT-DETR experiment."
    )
    dataset: DatasetConfig = spec_field(
        DatasetConfig, "Configurable parameters to construct the dataset for a RT-DETR experiment."
    )
    train: TrainConfig = spec_field(
        TrainConfig, "Configurable parameters to construct the trainer for a RT-DETR experiment."
    )
    evaluate: EvaluateConfig = spec_field(
        EvaluateConfig, "Configurable parameters to construct the evaluator for a RT-DETR experiment."
    )
    inference: InferenceConfig = spec_field(
        InferenceConfig, "Configurable parameters to construct the inferencer for a RT-DETR experiment."
    )
    export: ExportConfig = spec_field(
        ExportConfig, "Configurable parameters to construct the exporter for a RT-DETR experiment."
    )
    gen_trt_engine: GenTrtEngineConfig = spec_field(
        GenTrtEngineConfig,
        "Configurable parameters to construct the TensorRT engine builder for a RT-DETR experiment.",
    )
    distill: DistillConfig = spec_field(
        DistillConfig, "Configurable parameters to construct the distiller for a RT-DETR experiment."
    )
    quantize: QuantizeConfig = spec_field(
        QuantizeConfig,
        "CPU INT8 quantization of an exported model with ONNX Runtime.",
        note="Not in TAO's RT-DETR documentation (TAO has a quantize task for other models).",
    )
    automl: AutomlConfig = spec_field(
        AutomlConfig, "`rtdetr automl`: the search over the automl_enabled fields.", note=AUTOML_NOTE
    )
