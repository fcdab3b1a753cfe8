"""The embedded default: the whole Skin-R1 method on a tiny random Qwen2.5-VL and the
procedural `synthetic_derm` dataset, sized to run on a 2-core CPU in minutes.

Every config file returns this schema (other files start from `get_config()` here and
override), so `--config.<key>=value` works the same everywhere.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.workdir = "workdir/default"
    c.seed = 42

    # Device mesh: sizes of the `data`, `fsdp` and `tensor` axes; -1 fills the rest.
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.model = ConfigDict(dict(
        name="tiny",            # tiny | qwen2_5_vl_3b | qwen2_5_vl_7b | hf (read hf_dir/config.json)
        hf_dir="",              # local Hugging Face folder: weights, config, tokenizer
        adapter_dir="",         # local PEFT LoRA folder applied on top of hf_dir
        dtype="float32",        # compute dtype
        param_dtype="float32",  # master parameter dtype
        # Operand dtype of the matrix products; "" = dtype. "bfloat16" with dtype "float32":
        # bf16 products, f32 activations (torch.autocast's split; the fastest on CPU).
        matmul_dtype="",
        remat=False,
        vocab_size=2048,        # embedded tokenizer size (tiny model only)
        # Embedded tokenizer: option labels `A:`..`Z:` as single tokens, so that a small model can
        # copy an option by its label (model/tokenizer.py: OPTION_LABELS; option lines copied
        # right after SFT 0.54 -> 0.63, README "A letter-answering base").
        option_label_tokens=True,
        lora=ConfigDict(dict(
            rank=0,             # 0 = full fine-tuning
            alpha=32.0,
            dropout=0.0,
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj", "mlp.0", "mlp.2"),
            # The paper adapts the language model and the vision merger, not the ViT blocks.
            include_vision_blocks=False,
        )),
    ))

    c.data = ConfigDict(dict(
        dataset="synthetic_derm",
        data_dir="",            # TFDS data_dir; empty = <workdir>/tfds
        manual_dir="",          # folder holding a public dataset in its official layout
        subset="default",       # synthetic taxonomy subset: default | full
        class_balance="balanced",  # balanced | fitzpatrick (real long-tail counts)
        image_size=64,          # rendered image side, pixels
        dense_per_class=120,    # concept-annotated images per disease (captions, trajectories, SFT)
        # Label-only images per disease (RL): twice the annotated ones, as the paper's RL sets
        # outnumber its SFT set. 48 (each RL image seen ~4 times) -> 240: mcq_indomain after RL
        # 0.549 -> 0.592 from the same SFT model (0.540), same RL time.
        sparse_per_class=240,
        val_per_class=6,
        test_per_class=48,      # 576 test questions per set: +-0.04 is a 95% interval at 0.5
        ood_per_class=16,
        train_fraction=1.0,     # data-scaling runs: 0.01, 0.05, 0.1, 0.2
        on_bad_image="fail",    # fail | skip
        min_pixels=32 * 32,
        max_pixels=64 * 64,
        # The longest SFT row is 337 tokens (a benign/malignant twin; rows average 253 with
        # generate.option_thinking="findings", 291 and up to ~400 with "full", which wants 384).
        max_seq_len=352,
        # Pretrain and SFT batches pad to the smallest multiple of this that holds their longest
        # row, with rows grouped by length (stages/sft.py: ItemSource); 0 = pad to max_seq_len.
        length_bucket=32,
        # Logits (the vocabulary matmul) only at up to this many target positions per row of
        # an SFT or pretrain batch; a row with more is an error naming this key. 0 = every
        # position. The longest SFT response is 169 tokens (a trajectory; 218 with
        # generate.option_thinking="full", which wants 240).
        max_target_tokens=192,
    ))

    c.generate = ConfigDict(dict(
        types=("basic", "ddx_keep", "ddx_switch", "random_keep", "random_switch"),
        per_diagnosis_per_type=24,
        max_per_type=1000,
        think_tag="thinking",
        diagnosis_tag="diagnosis",
        final_tag="final diagnosis",
        # Share of trajectories also paired with a task-format question (data/sft_mix.py);
        # 0 is the paper's recipe, a tiny model needs the answer format taught.
        question_share=1.0,
        # Option questions' twins end their thinking with the taxonomy path and a check of
        # each option against it (data/sft_mix.py): the lookup a small model needs to answer
        # by letter (without it the 4-option sets stayed at chance; README "Ablations").
        option_check=True,
        # Twins per trajectory, each with its own draw of options and letters, so the options
        # must be read from the prompt rather than remembered per image (>1: more SFT items).
        question_variants=4,
        # Thinking of the option-checked twins: full (the trajectory's) | findings (its first
        # sentence, then "The findings fit <diagnosis>."). With findings the check sits ~100
        # tokens closer to the options it copies: option lines copied right after SFT 0.49 ->
        # 0.84, mcq_indomain 0.354 -> 0.554 (README "Short option thinking").
        option_thinking="findings",
        llm=ConfigDict(dict(enabled=False, url="", model="", api_key_env="OPENAI_API_KEY",
                            temperature=0.2, max_tokens=120, timeout_s=30.0)),
    ))

    # Vision-language alignment on image -> findings captions (stage `pretrain`), which a
    # random tiny model needs before it can see; 0 for a pretrained VLM checkpoint.
    c.pretrain = ConfigDict(dict(
        steps=1000,
        batch_size=16,
        learning_rate=2e-3,
        warmup_ratio=0.03,
        # Captions are ~75 tokens (chat template, image tokens, prompt); a concept question
        # with its answer ~250 (at 224, 16,007 rows were truncated).
        max_seq_len=272,
        # Concept questions per image (data/captions.py): the 4-option prompt about findings,
        # each option copied and checked, answered by letter, so that with keep=all the base
        # reads options from the prompt without disease knowledge (it copies 96% of option
        # lines of new draws). Each question draws its own options. 0 = captions only.
        questions_per_image=6,
        # all (the whole captioned model) | vision (the aligned tower + merger on a fresh LM:
        # better open-ended disease accuracy, 0.479 vs 0.330, but no letter answering;
        # configs/open_rl.py)
        keep="all",
    ))

    c.sft = ConfigDict(dict(
        steps=1600,             # 800 left the 4-option set at chance (0.250)
        batch_size=16,
        grad_accum=1,
        learning_rate=2e-3,
        warmup_ratio=0.03,
        weight_decay=0.0,
        grad_clip=1.0,
        # AdamW as one flat update over every trainable leaf (train/optim.fused_adamw) where
        # the mesh replicates the parameters (fsdp = tensor = 1), per parameter otherwise. The
        # same update up to rounding, in ~300 fewer XLA ops a step for the tiny model; the
        # optimizer state's layout differs, so a run resumes only with the setting it had.
        # These optimizer settings serve the RL stage too.
        fused_optimizer=True,
    ))

    c.rl = ConfigDict(dict(
        steps=160,
        # Prompts per update; each gets num_generations completions. 16 at temperature 0.5
        # lifted mcq_indomain 0.406 -> 0.490 where 8 at 0.7 gave 0.403 (one SFT model, full
        # option thinking).
        batch_size=16,
        num_generations=4,
        # The paper's. With short option thinking, 0.5 / 0.8 / 1.0 from one SFT model (0.554)
        # gave 0.592 / 0.609-0.620 / 0.616 on mcq_indomain: more groups with a reward spread.
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        # Rows are padded to this in the update. Option-checked answers are at most ~110
        # tokens with short option thinking (224 needed with full thinking; rl.task=open/mixed
        # answer with the full thinking, up to ~170).
        max_new_tokens=128,
        # 2e-4 left the policy close to SFT (KL 0.013 at the end of a 2026-12-04 run); 5e-4
        # moves it further (KL 0.04-0.09). Seeds: README "Results on the embedded default".
        learning_rate=5e-4,
        warmup_ratio=0.03,
        beta=0.04,              # KL weight (the paper's); 0 skips the reference forward
        mu=1,                   # updates per rollout batch (>1: clipped ratio vs the sampled
                                # log-probs; rl.steps counts updates, steps / mu rollout batches)
        clip_low=0.2,
        clip_high=0.2,          # DAPO uses a larger high clip, e.g. 0.28
        scale_std=True,         # False = Dr. GRPO (no std division)
        loss_agg="seq_mean",    # seq_mean (paper) | token_mean
        lambda_sft=0.5,         # joint objective: lambda_sft * SFT + lambda_rl * GRPO
        lambda_rl=1.0,
        # mcq (the paper's 4-option form) | open (taxonomy-distance reward; configs/open_rl.py)
        # | mixed (a stable per-question coin).
        task="mcq",
        # 4-option questions per RL image, each with its own options and letters (mcq, mixed).
        option_draws=1,
        init_from="sft",        # sft | base (the paper's "RL without SFT" ablation)
        init_sft_step=0,        # SFT checkpoint step RL starts from; 0 = the final one
        reward=ConfigDict(dict(
            variant="hierarchical",   # hierarchical | flat
            format_weight=1.0,
            option_weight=1.0,        # scales the option score, itself at most 0.75
            malignancy_weight=0.25,
            distance_mode="distance",  # distance | shared_depth (open-ended form)
            distance_decay=0.5,
            # Lookup reward (not the paper's): weight x (half the share of option lines copied
            # exactly, half whether the letter follows the written path; eval/option_check.py).
            # 0.5 moved mcq_indomain by -0.02..+0.03 against 0 over 3 seeds, within RL's own
            # run-to-run spread, and cost mcq_hierarchical on 2 (README "A lookup reward"), so
            # the default keeps the paper's reward.
            check_weight=0.0,
        )),
    ))

    c.eval = ConfigDict(dict(
        models=("base", "sft", "sft_rl"),
        sets=("indomain", "b_or_m", "hierarchical", "ddx", "ood", "open", "ood_open"),
        max_new_tokens=224,
        batch_size=64,          # 32: 78 s for the 3 models' 7 sets, 64: fewer, fuller decode loops
        max_examples=0,         # per question set, evenly spaced over the split; 0 = all
    ))

    c.checkpoint = ConfigDict(dict(every_steps=100, keep=2, best_metric="", async_save=True))
    c.log = ConfigDict(dict(every_steps=10, tensorboard=True))
    return c
