"""Run integrity, round 2 (the hostile tester's cases of issue 19 that are fixed): an evaluation's output that is
its own input (steps 1 and 2: the writer's own test, tests/test_boundary.py), a lock file that is a symlink,
evaluation input checked as strictly as step 1's, ChatML markers that are not special tokens, data paths that look
like globs, name a folder or a file twice, a batch plan that matches dataloader_drop_last, and settings the Trainer
would only reject once the weights are loaded (or that need a missing package). Each case is one ``error:`` line
and exit code 2 (or, for the plan, the Trainer's own count), and nothing is changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_bad_input import GOOD, assert_empty, conversations, fails
from transformers import TrainingArguments

from helpers import SAMPLE_TOKENIZER, run_cli
from slamkit.chatml import IGNORE_INDEX


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tiny_model, sample_tokens, tmp_path):
    """.slamkit.lock as a symlink to a user's file: the run stops with one line, the file keeps its bytes."""
    victim = tmp_path / "notes.txt"
    victim.write_text("my notes\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".slamkit.lock").symlink_to(victim)
    code, _, err = run_cli(f"model.base_model_name={tiny_model}", f"data.train_path={sample_tokens['train']}",
                           "data.val_path=null", "training_args.eval_strategy=no", f"training_args.output_dir={out}")
    assert code == 2
    assert err.splitlines()[-1] == (
        f"error: {out / '.slamkit.lock'}: is a symbolic link, not slamkit's lock file; remove it (nothing else was touched)"
    )
    assert victim.read_text() == "my notes\n"


@pytest.fixture
def scored(sample_step1, tmp_path) -> Path:
    lines = (sample_step1 / "arc_easy_test.jsonl").read_text().splitlines()[:4]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("scoring", ["categorical", "cloze"])
def test_a_batch_size_below_one_is_refused_before_the_model_loads(load_script, tiny_model, scored, scoring, capsys):
    base = load_script("example_arc/eval_arc_base.py")
    argv = ["--model_name", str(tiny_model), "--data_path", str(scored), "--scoring", scoring, "--batch_size", "-1"]
    assert fails(capsys, lambda: base.main(argv)) == "error: --batch_size must be at least 1, got -1"


def test_a_question_id_that_repeats_is_refused(eval_arc, tiny_model, scored, tmp_path, capsys):
    """Two records with one id would be scored and counted twice: refused, naming both lines."""
    first = scored.read_text().splitlines()[0]
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text(first + "\n" + first + "\n")
    qid = json.loads(first)["id"]
    line = fails(capsys, lambda: eval_arc.main(["--model_path", str(tiny_model), "--data_path", str(doubled), "--device", "cpu"]))
    assert line == f"error: {doubled}:2 (id {qid}): duplicate id '{qid}' (first at {doubled}:1 (id {qid}))"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r.update(choice_texts="ice, steam"), "'choice_texts' must be a list of strings"),
    (lambda r: r.update(choice_texts=r["choice_texts"][:2]), "2 choice_texts for 4 choice_labels"),
])
def test_cloze_refuses_malformed_choice_texts(load_script, tiny_model, scored, tmp_path, edit, message, capsys):
    record = json.loads(scored.read_text().splitlines()[0])
    edit(record)
    path = conversations(tmp_path / "bad.jsonl", record)
    base = load_script("example_arc/eval_arc_base.py")
    argv = ["--model_name", str(tiny_model), "--data_path", str(path), "--scoring", "cloze", "--device", "cpu"]
    line = fails(capsys, lambda: base.main(argv), after_bar="Loading weights")
    assert line == f"error: {path}:1 (id {record['id']}): {message}"


def test_a_choice_label_that_is_a_control_token_is_refused(step2, tmp_path, capsys):
    """A label "<|im_end|>" would be scored as the control token: refused, naming the record."""
    data = conversations(tmp_path / "conv.jsonl",
                         {**GOOD, "assistant_text": "<|im_end|>", "choice_labels": ["A", "<|im_end|>"]})
    argv = ["--data_path", str(data), "--out_path", str(tmp_path / "out" / "t.jsonl"), "--tokenizer", str(SAMPLE_TOKENIZER)]
    line = fails(capsys, lambda: step2.main(argv))
    assert line.endswith("choice letter '<|im_end|>' is a special token, not text")
    assert_empty(tmp_path / "out")


def test_chatml_markers_that_are_not_special_tokens_are_refused(step2, tmp_path, capsys):
    """A tokenizer whose <|im_start|>/<|im_end|> are added but not special would let data text forge turns:
    refused with the fix."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SAMPLE_TOKENIZER)
    config = json.loads((SAMPLE_TOKENIZER / "tokenizer_config.json").read_text())
    folder = tmp_path / "tok"
    shutil.copytree(SAMPLE_TOKENIZER, folder)
    for entry in config.get("added_tokens_decoder", {}).values():
        if entry["content"] in ("<|im_start|>", "<|im_end|>"):
            entry["special"] = False
    config["additional_special_tokens"] = []
    config["eos_token"] = "<|endoftext|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert tokenizer.added_tokens_decoder[151644].special  # the bundled one is fine
    data = conversations(tmp_path / "conv.jsonl", GOOD)
    argv = ["--data_path", str(data), "--out_path", str(tmp_path / "out" / "t.jsonl"), "--tokenizer", str(folder)]
    line = fails(capsys, lambda: step2.main(argv))
    assert "<|im_start|> is an added token, not a special token, so text in the data could forge" in line


def test_a_data_path_that_exists_is_taken_literally_even_if_it_looks_like_a_glob(tmp_path):
    from slamkit.data import expand_paths

    literal = tmp_path / "rows[1].jsonl"
    literal.write_text("{}\n")
    (tmp_path / "rows1.jsonl").write_text("{}\n")  # what the glob rows[1].jsonl would match
    assert expand_paths(str(literal)) == [literal]
    assert expand_paths(str(tmp_path / "rows[1]*.jsonl")) == [tmp_path / "rows1.jsonl"]


def test_the_announced_plan_is_the_trainers_with_dataloader_drop_last(tiny_model):
    """dataloader_drop_last=true: the first lines announce the steps the Trainer makes (4 x 4 on 2,251 rows: 141
    per epoch, 3 rows dropped), and the single micro-batch is not used (16 x 1 would drop 11 rows and a step)."""
    from test_training import compose_config

    from slamkit.data import TokenRow
    from slamkit.model import load_causal_lm
    from slamkit.training import batch_plan, build_trainer, build_training_arguments

    config = compose_config("training_args.eval_strategy=no", "training_args.dataloader_drop_last=true")
    args = build_training_arguments(config.training_args, config.speed, has_validation=False)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 4)
    rows = [TokenRow(input_ids=[1, 2, 3], labels=[IGNORE_INDEX, 2, 3]) for _ in range(2251)]
    plan = batch_plan(args, config.training_args, len(rows))
    trainer = build_trainer(load_causal_lm(str(tiny_model)), args, rows)
    _, per_epoch, _, _, _, _, max_steps = trainer.set_initial_training_values(args, trainer.get_train_dataloader())
    assert (plan.steps_per_epoch, plan.total_steps) == (per_epoch, max_steps) == (141, 423)


def test_the_best_job_of_a_sweep_is_a_completed_one_and_ties_are_named():
    """A failed job's last validation never wins; two completed jobs at the same accuracy are both named."""
    from pathlib import Path as P

    from slamkit.sweep import JobSummary, best_jobs

    def job(name, status, accuracy):
        return JobSummary(job=name, overrides=f"lr={name}", status=status, train_loss=0.7, eval_loss=0.7,
                          eval_accuracy=accuracy, eval_n=100, eval_correct=None, steps=3, wall_s=1.0,
                          folder=P(name), curve=[], loss_curve=[])

    jobs = [job("0", "failed", 0.9), job("1", "complete", 0.4), job("2", "complete", 0.5), job("3", "complete", 0.5)]
    assert [j.job for j in best_jobs(jobs)] == ["2", "3"]
    assert [j.job for j in best_jobs(jobs[:2])] == ["1"]
    assert best_jobs(jobs[:1]) == []


# transformers 5.2x renamed gradient_checkpointing* to activation_checkpointing* (the old names are aliases)
CHECKPOINTING_KWARGS = next(name for name in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs")
                            if name in TrainingArguments.__dataclass_fields__)


@pytest.mark.parametrize(("overrides", "message"), [
    (["training_args.optim=adamw_bnb_8bit"], "training_args.optim=adamw_bnb_8bit: You need to install `bitsandbytes`"),
    (["training_args.lr_scheduler_kwargs={bogus: 1}"], "training_args.lr_scheduler_kwargs: {'bogus': 1} do not fit "
     "lr_scheduler_type=cosine"),
    (["training_args.batch_eval_metrics=true"], "training_args.batch_eval_metrics=true: slamkit's validation accuracy"),
    (["training_args.eval_do_concat_batches=false"], "training_args.eval_do_concat_batches=false: slamkit's"),
    (["training_args.load_best_model_at_end=true", "training_args.metric_for_best_model=eval_f1",
      "training_args.save_strategy=epoch"], "training_args.metric_for_best_model=eval_f1: a validation logs only"),
    (["training_args.save_strategy=best"], "training_args.save_strategy=best: needs training_args.metric_for_best_model"),
    (["training_args.fsdp=full_shard"], "training_args.fsdp: needs several processes"),
    (["model.attn_implementation=fast"], "model.attn_implementation='fast': not one of sdpa, eager, flash_attention_2"),
    (["model.attn_implementation=fast", "model.twist_init=false"], "model.attn_implementation='fast': not one of"),
    (["training_args.seed=-1"], "training_args.seed=-1: must be between 0 and 4,294,967,295"),
    (["training_args.data_seed=4294967296"], "training_args.data_seed=4294967296: must be null (= seed) or between 0"),
    (["training_args.neftune_noise_alpha=-1"], "training_args.neftune_noise_alpha=-1.0: must be null (off) or a number"),
    (["training_args.optim=sgd", "training_args.optim_args='momentum=abc'"],
     "training_args.optim=sgd with optim_args='momentum=abc': could not convert string to float: 'abc'"),
    ([f"training_args.{CHECKPOINTING_KWARGS.removesuffix('_kwargs')}=true",
      f"training_args.{CHECKPOINTING_KWARGS}={{bogus: 1}}"],
     f"training_args.{CHECKPOINTING_KWARGS}={{'bogus': 1}}: Unexpected keyword arguments: bogus"),
    (["training_args.torch_compile=true", "training_args.torch_compile_mode=bogus"],
     "training_args.torch_compile_backend='inductor', torch_compile_mode='bogus': Unrecognized mode=bogus"),
    (["training_args.torch_compile=true", "training_args.torch_compile_backend=nonexist"],
     "training_args.torch_compile_backend='nonexist', torch_compile_mode=None: Invalid backend: 'nonexist'"),
    (["training_args.report_to=bogus"], "training_args.report_to='bogus': not one of azure_ml, comet_ml, "),
    (["training_args.lr_scheduler_type=cosine_with_min_lr"], "training_args.lr_scheduler_kwargs: None do not fit "
     "lr_scheduler_type=cosine_with_min_lr (One of min_lr or min_lr_rate should be set"),
])
def test_settings_the_trainer_would_trip_on_later_are_refused_before_the_folder_is_claimed(
    tiny_model, sample_tokens, tmp_path, overrides, message
):
    """Each setting that the Trainer would only reject after the weights are loaded (some after an epoch, some after
    the run started, several in a traceback) is one line before anything is read or created; transformers' own
    warnings about a setting may precede it, a traceback never."""
    out = tmp_path / "run"
    code, _, err = run_cli(f"model.base_model_name={tiny_model}", f"data.train_path={sample_tokens['train']}",
                           f"data.val_path={sample_tokens['validation']}", f"training_args.output_dir={out}", *overrides)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith(f"error: {message}"), err
    assert "Traceback" not in err and all(line.startswith("[transformers]") for line in lines[:-1]), err
    assert not out.exists()


@pytest.mark.parametrize(("package", "overrides", "message"), [
    ("deepspeed", ["training_args.deepspeed=ds_config.json"], "training_args.deepspeed: needs the deepspeed package"),
    ("liger_kernel", ["training_args.use_liger_kernel=true"], "training_args.use_liger_kernel=true: needs the "
     "liger-kernel package"),
    ("flash_attn", ["model.attn_implementation=flash_attention_2"], "model.attn_implementation=flash_attention_2: "
     "the flash-attn package is not installed"),
    ("wandb", ["logger=wandb"], "logger=wandb (training_args.report_to) needs the wandb package: pip install wandb"),
])
def test_a_setting_whose_package_is_missing_is_one_line_naming_it(tiny_model, sample_tokens, tmp_path, package,
                                                                  overrides, message):
    """A setting that needs a package this machine lacks: one line naming the package, before anything is read
    (deepspeed failed inside TrainingArguments, in a traceback)."""
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    out = tmp_path / "run"
    code, _, err = run_cli(f"model.base_model_name={tiny_model}", f"data.train_path={sample_tokens['train']}",
                           "data.val_path=null", "training_args.eval_strategy=no", f"training_args.output_dir={out}",
                           *overrides)
    assert code == 2 and err.splitlines()[-1].startswith(f"error: {message}"), err
    assert "Traceback" not in err and not out.exists()


def test_resume_compares_the_optimizer_settings_and_the_data_by_content_not_by_spelling():
    """Adam's betas and epsilon, optimizer and scheduler arguments, data_seed, the sampling strategy and bf16 are
    compared on resume; the same data file written as a relative and as an absolute path is not a change."""
    from slamkit.run_folder import changed_settings

    def record(path, **training):
        return {"config": {"data": {"train_path": path}, "training_args": {"adam_beta2": 0.999, **training}},
                "data": {"train": {"sha256": "abc"}}, "effective": {"bf16": True}}

    assert changed_settings(record("data/t.jsonl"), record("/home/me/data/t.jsonl")) == []
    assert changed_settings(record("t.jsonl"), record("t.jsonl", adam_beta2=0.95, data_seed=3)) == [
        "training_args.adam_beta2: 0.999 -> 0.95", "training_args.data_seed: None -> 3"]
    moved = record("t.jsonl")
    moved["data"]["train"]["sha256"] = "def"
    assert changed_settings(record("t.jsonl"), moved) == ["data.train file contents"]


@pytest.mark.parametrize("script", ["example_arc/eval_arc.py", "example_arc/eval_arc_base.py"])
def test_an_evaluation_never_writes_over_its_questions_file(load_script, tiny_model, scored, tmp_path, script, capsys):
    """--output_dir holding the questions file under an output's name (predictions.jsonl), even with --overwrite:
    refused before the model loads, the file unchanged."""
    folder = tmp_path / "eval"
    folder.mkdir()
    questions = folder / "predictions.jsonl"
    shutil.copy(scored, questions)
    before = questions.read_bytes()
    flag = "--model_path" if script.endswith("eval_arc.py") else "--model_name"
    argv = [flag, str(tiny_model), "--data_path", str(tmp_path / "eval" / ".." / "eval" / "predictions.jsonl"),
            "--output_dir", str(folder), "--overwrite", "--device", "cpu"]
    line = fails(capsys, lambda: load_script(script).main(argv))
    assert line == (f"error: {questions}: --output_dir would write over the input file {argv[3]}; write the output "
                    "elsewhere")
    assert questions.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["predictions.jsonl"]


def test_data_paths_name_each_file_once_and_never_a_folder(tmp_path):
    """A folder given as a data file, or one file given twice (another spelling, or a glob that matches it again)
    would train on nothing or on its rows twice: refused, naming it."""
    from slamkit.data import expand_paths
    from slamkit.errors import SlamkitError

    (tmp_path / "rows").mkdir()
    rows = tmp_path / "rows" / "train.jsonl"
    rows.write_text("{}\n")
    with pytest.raises(SlamkitError, match=r"rows: a folder, not a file; give its files \(e\.g\. .*rows/\*\.jsonl\)$"):
        expand_paths(str(tmp_path / "rows"))
    for twice in (str(tmp_path / "rows" / ".." / "rows" / "train.jsonl"), str(tmp_path / "rows" / "*.jsonl")):
        with pytest.raises(SlamkitError, match=r"train\.jsonl: given twice \(also as .*train\.jsonl\); list each data file"):
            expand_paths([str(rows), twice])
    assert expand_paths([str(rows)]) == [rows]


def test_validation_on_a_training_file_trains_as_asked_and_says_so(tiny_model, sample_tokens, tmp_path):
    """data.val_path naming a training file trains as asked, with a warning that its validation figures measure
    training data."""
    out = tmp_path / "run"
    code, out_text, err = run_cli(
        f"model.base_model_name={tiny_model}", f"data.train_path={sample_tokens['train']}",
        f"data.val_path={sample_tokens['train']}", f"training_args.output_dir={out}", "training_args.max_steps=1",
        "training_args.eval_strategy=no", "training_args.save_strategy=no", "data.max_val_examples=4",
    )
    assert code == 0, err[-2000:]
    assert (f"warning: data.val_path {sample_tokens['train']} is also a training file: its validation figures measure "
            "data the model trains on") in out_text + err


def test_two_evaluations_into_one_folder_at_once_the_second_stops_naming_the_first(eval_arc, tiny_model, scored,
                                                                                    tmp_path, capsys):
    """While an evaluation holds its --output_dir (here this test holds it, with the same lock), a second one into it
    stops at once with one line naming the holder, even with --overwrite, and writes nothing; once the folder is
    free it runs, and leaves its three files and no lock file."""
    import os

    from slamkit.run_folder import RunFolder

    folder = tmp_path / "eval"
    argv = ["--model_path", str(tiny_model), "--data_path", str(scored), "--output_dir", str(folder), "--device", "cpu"]
    with RunFolder(folder, key="--output_dir", holder="evaluation") as first:
        first.hold()
        line = fails(capsys, lambda: eval_arc.main([*argv, "--overwrite"]))
        assert line.startswith(f"error: {folder}: in use by another evaluation (pid {os.getpid()} on ")
        assert line.endswith("; wait for it to finish or choose another --output_dir")
        assert sorted(p.name for p in folder.iterdir()) == [".slamkit.lock"]
        first.leave_as_found()
    assert not folder.exists()
    assert eval_arc.main(argv) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["confusion_matrix.png", "predictions.jsonl", "results.json"]


def test_resume_from_checkpoint_is_refused_pointing_to_cont_training(tiny_model, sample_tokens, tmp_path):
    """training_args.resume_from_checkpoint (which the Trainer never reads: a run resumes its own folder) stops with
    one line naming the key and cont_training, before the output folder is created."""
    out = tmp_path / "run"
    code, _, err = run_cli(f"model.base_model_name={tiny_model}", f"data.train_path={sample_tokens['train']}",
                           "data.val_path=null", "training_args.eval_strategy=no", f"training_args.output_dir={out}",
                           f"training_args.resume_from_checkpoint={tmp_path / 'old' / 'checkpoint-3'}")
    assert code == 2, err
    line = err.splitlines()[-1]
    assert line.startswith("error: training_args.resume_from_checkpoint") and "cont_training" in line
    assert "Traceback" not in err and not out.exists() and sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("overrides", "key"), [
    (["training_args.save_strategy=best", "training_args.metric_for_best_model=eval_accuracy"], "save_strategy=best"),
    (["training_args.load_best_model_at_end=true", "training_args.save_strategy=no"], "load_best_model_at_end=true"),
    (["training_args.metric_for_best_model=eval_accuracy"], "metric_for_best_model=eval_accuracy"),
])
def test_what_only_a_validation_feeds_is_refused_without_one(tiny_model, sample_tokens, tmp_path, overrides, key):
    """save_strategy=best, load_best_model_at_end=true and metric_for_best_model without validation (no val_path,
    eval_strategy=no) would silently do nothing: each is one line naming the key, before the folder is claimed."""
    out = tmp_path / "run"
    code, _, err = run_cli(f"model.base_model_name={tiny_model}", f"data.train_path={sample_tokens['train']}",
                           "data.val_path=null", "training_args.eval_strategy=no", f"training_args.output_dir={out}",
                           *overrides)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith(f"error: training_args.{key}"), err
    assert "validation" in lines[-1] and "Traceback" not in err
    assert not out.exists()
