import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, SAMPLE, free_port, run_module, sample_records
from trainer.eval_report import chrf, rouge_l
from trainer.evaluate import LOSS_NOT_MEASURED, encode, learned_token_loss, main, select_records
from trainer.train import DataArguments, load_datasets


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    result = run_module("trainer.train", "--model", tiny_llama, "--data_path", SAMPLE, "--output_dir", out,
                        "--max_steps", "4", "--learning_rate", "3e-3", "--save_strategy", "no", "--model_max_length", "1024")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_metrics_on_known_strings():
    text = "Minum banyak air dan istirahat yang cukup."
    assert rouge_l(text, text) == 1.0 and chrf(text, text) == pytest.approx(100.0)
    assert rouge_l("abc def", "xyz uvw") == 0.0 and chrf("abc def", "xyz uvw") < 5
    assert 0 < rouge_l("minum air putih", "minum banyak air") < 1


def test_loss_matches_a_hand_computation_on_masked_labels(trained):
    tokenizer = AutoTokenizer.from_pretrained(trained)
    model = AutoModelForCausalLM.from_pretrained(trained).eval()
    record = sample_records()[0]
    ids, labels = encode(tokenizer, record)
    learned = [i for i, label in enumerate(labels) if label != -100]
    assert labels[learned[-1]] == tokenizer.eos_token_id and learned == list(range(learned[0], len(ids)))
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    by_hand = -sum(float(log_probs[i - 1, ids[i]]) for i in learned) / len(learned)
    loss, count = learned_token_loss(model, tokenizer, [record])
    assert count == len(learned) and loss == pytest.approx(by_hand, rel=1e-5)


def test_the_split_is_the_training_split():
    _, val, counts = load_datasets(DataArguments(data_path=str(SAMPLE), max_eval_samples=0))
    assert select_records(str(SAMPLE)) == val and counts.val == 5
    assert select_records(str(SAMPLE), limit=2) == val[:2]


def test_report_lists_every_model(trained, tiny_gpt2, tmp_path):
    out = tmp_path / "eval"
    result = run_module("trainer.evaluate", "--model", trained, "--model", tiny_gpt2, "--template", "alpaca-id",
                        "--data_path", SAMPLE, "--limit", "2", "--max_new_tokens", "6", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "eval.json").read_text())
    assert list(report["models"]) == [str(trained), str(tiny_gpt2)] and report["records"] == 2
    assert report["shapes"] == ["input", "empty"]
    for by_shape in report["models"].values():
        assert list(by_shape) == ["input", "empty"]
        for metrics in by_shape.values():
            assert metrics["learned_tokens"] > 0 and metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["loss"], rel=1e-6)
            assert len(metrics["answers"]) == len(metrics["finishes"]) == 2 and 0 <= metrics["eos_share"] <= 1
            assert 0 <= metrics["indonesian_share"] <= 1 and 0 <= metrics["repetition_share"] <= 1
        # The sample records have inputs, so the empty-input prompt is shorter: fewer tokens, another loss.
        assert by_shape["input"]["loss"] != by_shape["empty"]["loss"]
    table = (out / "eval.md").read_text()
    assert f"`{trained}` | input |" in table and f"`{tiny_gpt2}` | empty |" in table and "**Sample 1.**" in table


def test_language_and_repetition_measures_on_known_strings():
    from trainer.eval_report import has_repetition, is_indonesian

    assert is_indonesian("Anda mungkin mengalami infeksi saluran kemih. Minumlah banyak air dan segera periksa ke dokter.")
    assert not is_indonesian("You may have a urinary tract infection. Drink plenty of water and see your doctor.")
    assert not is_indonesian("") and not is_indonesian("   ")
    loop = "Anda perlu minum obat. " + "Anda perlu minum obat yang diresepkan dokter. " * 3
    assert has_repetition(loop)
    assert not has_repetition("Anda perlu minum obat. Anda perlu istirahat. Anda perlu periksa ke dokter.")
    assert not has_repetition("satu dua tiga")


def test_both_prompt_shapes_of_a_record():
    from trainer.prompts import messages_for

    record = {"instruction": "Jika Anda seorang dokter, jawablah.", "input": "Saya demam.", "output": "Istirahat."}
    assert messages_for(record, "input") == [{"role": "system", "content": record["instruction"]},
                                             {"role": "user", "content": "Saya demam."}]
    assert messages_for(record, "empty") == [{"role": "user", "content": "Saya demam."}]
    no_input = dict(record, input="")
    assert messages_for(no_input, "input") == messages_for(no_input, "empty") == [{"role": "user", "content": record["instruction"]}]


def test_a_model_measured_by_loss_only_gets_no_answers(trained, tiny_gpt2, tmp_path):
    out = tmp_path / "eval"
    result = run_module("trainer.evaluate", "--model", trained, "--model", tiny_gpt2, "--template", "alpaca-id",
                        "--data_path", SAMPLE, "--limit", "2", "--max_new_tokens", "4", "--loss_only", tiny_gpt2,
                        "--shapes", "empty", "--output_dir", out)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["dtype"] == "float32" and report["shapes"] == ["empty"]
    assert set(report["models"][str(tiny_gpt2)]["empty"]) == {"loss", "perplexity", "learned_tokens"}
    assert len(report["models"][str(trained)]["empty"]["answers"]) == 2
    assert f"| `{tiny_gpt2}` | empty |" in (out / "eval.md").read_text() and "| – | – | – |" in (out / "eval.md").read_text()


def test_the_held_out_share_comes_from_the_trained_folder(tmp_path, caplog):
    from trainer.evaluate import held_out_share
    from trainer.run_summary import RecordCounts, RunSummary

    trained = tmp_path / "run"
    trained.mkdir()
    RunSummary(data_path="/data/GenMedGPT-5k-id.json", records=RecordCounts(val_set_size=200)).write(trained)
    assert held_out_share(["gemma3-270m", str(trained)], "../x/GenMedGPT-5k-id.json", None) == 200
    assert held_out_share([str(trained)], "other.json", None) == 0.1  # trained on another file: training's default
    assert held_out_share(["gemma3-270m"], "GenMedGPT-5k-id.json", None) == 0.1
    with caplog.at_level("WARNING"):
        assert held_out_share([str(trained)], "GenMedGPT-5k-id.json", 0.1) == 0.1
    assert "held out 200" in caplog.text and "trained on" in caplog.text


def test_the_question_set_is_answered_scored_and_reused(trained, tiny_gpt2, tmp_path):
    """--questions: every model answers the project's question set, scored per answer; --previous copies a model
    already measured on the same questions and settings instead of answering again."""
    first = tmp_path / "first"
    result = run_module("trainer.evaluate", "--model", trained, "--template", "alpaca-id", "--questions",
                        "data/eval/questions.jsonl", "--questions_max_new_tokens", "3", "--shapes", "empty", "--out", first)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((first / "eval.json").read_text())
    asked = report["questions"]
    assert "models" not in report and asked["count"] == len(asked["items"]) >= 100 and asked["max_new_tokens"] == 3
    m = asked["models"][str(trained)]["empty"]
    assert len(m["answers"]) == len(m["scores"]) == asked["count"] and m["red_flag_questions"] == asked["red_flag_questions"]
    assert 0 <= m["right_condition_share"] <= 1 and 0 <= m["emergency_share"] <= 1
    assert "right condition" in (first / "eval.md").read_text()
    second = tmp_path / "second"
    result = run_module("trainer.evaluate", "--model", trained, "--model", tiny_gpt2, "--template", "alpaca-id",
                        "--questions", "data/eval/questions.jsonl", "--questions_max_new_tokens", "3", "--shapes", "empty",
                        "--previous", first / "eval.json", "--ask", "Dok, saya pilek sejak kemarin.", "--out", second)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((second / "eval.json").read_text())
    again = report["questions"]["models"]
    assert again[str(trained)] == asked["models"][str(trained)]  # copied, not answered again
    assert "question results of ['" + str(trained) + "']" in result.stderr
    assert len(again[str(tiny_gpt2)]["empty"]["answers"]) == asked["count"]
    unseen = report["unseen"]  # --ask: every model answers, as the page does
    assert unseen["questions"] == ["Dok, saya pilek sejak kemarin."] and set(unseen["models"]) == {str(trained), str(tiny_gpt2)}
    assert unseen["settings"]["repetition_penalty"] == 1.1 and "Dok, saya pilek sejak kemarin." in (second / "eval.md").read_text()


def test_held_out_results_are_reused_only_for_the_same_records(trained, tmp_path):
    first = tmp_path / "first"
    args = ["--model", trained, "--template", "alpaca-id", "--data_path", SAMPLE, "--limit", "2", "--max_new_tokens", "3",
            "--shapes", "empty"]
    assert run_module("trainer.evaluate", *args, "--out", first).returncode == 0
    result = run_module("trainer.evaluate", *args, "--previous", first / "eval.json", "--out", tmp_path / "same")
    assert result.returncode == 0 and f"{trained}: copied from" in result.stderr
    same = json.loads((tmp_path / "same" / "eval.json").read_text())["models"]
    assert same == json.loads((first / "eval.json").read_text())["models"]
    result = run_module("trainer.evaluate", *args[:-4], "--limit", "3", *args[-4:], "--previous", first / "eval.json",
                        "--out", tmp_path / "other")
    assert result.returncode == 0 and "held-out results of none" in result.stderr
    # int8 weights are another model: measured again, and named in the report
    result = run_module("trainer.evaluate", *args, "--quantize", "int8", "--previous", first / "eval.json", "--out", tmp_path / "int8")
    assert result.returncode == 0 and "held-out results of none" in result.stderr
    int8 = json.loads((tmp_path / "int8" / "eval.json").read_text())
    assert int8["quantize"] == "int8" and "int8 weights, float32 activations" in result.stderr
    assert "float32 with int8 weights." in (tmp_path / "int8" / "eval.md").read_text()
    assert int8["models"][str(trained)]["empty"]["loss"] > 0


# ---- through an inference engine: `transformers serve` of the tiny model folder (tests/conftest.py's `backend`) ----

def evaluate(*args) -> int:
    """trainer.evaluate's main() in this process: no second interpreter to start, the server's client is the CLI's."""
    return main([str(a) for a in args])


LOSS = ("loss", "perplexity", "learned_tokens")  # what only a local model measures


def report(folder) -> tuple[dict, str]:
    return json.loads((folder / "eval.json").read_text()), (folder / "eval.md").read_text()


@pytest.mark.slow
def test_a_backends_answers_score_as_the_local_models(model_folder, backend, tmp_path, caplog):
    """--backend: the same records and questions answered by `transformers serve` of the folder and by the folder loaded
    here score the same, to the last digit; the loss needs the local model (--model), else it is null with a note."""
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join((ROOT / "data/eval/questions.jsonl").read_text().splitlines(keepends=True)[:3]))
    # Budgets at which no answer of these records ends inside a UTF-8 character: the random model emits such endings,
    # which a whole decode (ChatModel) shows as U+FFFD and a streaming one (transformers serve) drops (test_remote's
    # same_text). A trained model rarely stops there; at other budgets these answers differ by that last U+FFFD.
    common = ["--data_path", SAMPLE, "--limit", "3", "--max_new_tokens", "10", "--questions", questions,
              "--questions_max_new_tokens", "12"]
    assert evaluate("--model", model_folder, *common, "--output_dir", tmp_path / "local") == 0
    with caplog.at_level("INFO"):
        assert evaluate("--backend", backend, *common, "--concurrency", "3", "--output_dir", tmp_path / "served") == 0
    (local, _), (served, served_md) = report(tmp_path / "local"), report(tmp_path / "served")
    name = str(model_folder)  # transformers serve names the model by its path: the same row as the local one
    assert served["backend"] == {"url": backend, "model": name, "concurrency": 3, "loss_from": None, "note": LOSS_NOT_MEASURED}
    for shape in ("input", "empty"):
        here, there = local["models"][name][shape], served["models"][name][shape]
        assert there["answers"] == here["answers"] and all(here["answers"])
        assert there["finishes"] == here["finishes"] == ["length"] * 3  # a random model never ends on EOS
        assert {k: v for k, v in there.items() if k not in LOSS} == {k: v for k, v in here.items() if k not in LOSS}
        assert [there[k] for k in LOSS] == [None] * 3 and here["loss"] > 0
    assert served["questions"]["models"] == local["questions"]["models"]  # scores, answers, finishes
    assert LOSS_NOT_MEASURED in caplog.text and f"answers from {name} at {backend}, 3 requests in flight" in caplog.text
    # repetition_penalty 1.0 was sent, not left to the model's generation_config (transformers serve takes it there)
    assert "refuses a repetition_penalty field; sending it in generation_config" in caplog.text
    assert f"| `{name}` | input | – | – | {local['models'][name]['input']['rouge_l']:.3f} |" in served_md
    assert f"generated by `{name}` on the inference server at {backend}; {LOSS_NOT_MEASURED.rstrip('.')}." in served_md

    # With the served model's local copy, the loss too: the whole measurement is the local one.
    assert evaluate("--backend", backend, "--model", model_folder, "--data_path", SAMPLE, "--limit", "3",
                    "--max_new_tokens", "10", "--shapes", "empty", "--output_dir", tmp_path / "both") == 0
    both, both_md = report(tmp_path / "both")
    assert both["models"][name]["empty"] == local["models"][name]["empty"]
    assert both["backend"]["loss_from"] == name and "note" not in both["backend"]
    assert f"; loss on the local copy `{name}` in float32." in both_md


@pytest.mark.slow
def test_a_model_the_backend_does_not_serve_is_an_error_line(backend, tmp_path, capsys, caplog):
    with caplog.at_level("WARNING", logger="trainer.evaluate"):
        assert evaluate("--backend", backend, "--backend_model", "alpaca-medis/not-served", "--data_path", SAMPLE,
                        "--limit", "2", "--max_new_tokens", "4", "--output_dir", tmp_path) == 2
    err = capsys.readouterr().err
    # transformers serve, pinned to one model, refuses others with a 400 (vLLM: a 404, "has no model ...")
    assert err.startswith(f"error: The inference server at {backend} refused the request (HTTP 400): Server is pinned to")
    assert err.count("\n") == 1 and "not alpaca-medis/not-served" in caplog.text and not (tmp_path / "eval.json").exists()


def test_an_unreachable_backend_is_an_error_line(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    for named in ([], ["--backend_model", "m"]):  # its models are asked for: to pick one, or to check the name
        assert evaluate("--backend", url, *named, "--data_path", SAMPLE, "--output_dir", tmp_path) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: The inference server at {url} cannot be reached") and err.count("\n") == 1


def test_how_backend_combines_with_the_other_flags(capsys):
    url = "http://127.0.0.1:1/v1"
    with pytest.raises(SystemExit) as exited:
        evaluate("--backend", url, "--model", "a", "--model", "b", "--loss_only", "a", "--previous", "x.json",
                 "--concurrency", "0", "--data_path", SAMPLE)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "give at most one --model, its local copy for the loss" in err
    assert "--loss_only" in err and "drop --previous" in err and "--concurrency 0" in err
    with pytest.raises(SystemExit):
        evaluate("--model", "a", "--concurrency", "4", "--data_path", SAMPLE)
    assert "--concurrency is for --backend" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate("--data_path", SAMPLE)
    assert "Give --model (a model to load here) or --backend URL" in capsys.readouterr().err
