"""`vlmsam segment` and `vlmsam sam` against hostile input: unique output stems across a batch, a user's
files in --out, a batch that meets a bad image, SIGKILL and --resume, glob characters in a real file
name, undecodable requests, --detector where no design takes one, special files as images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.robust_cli import BUNDLED_SAM, assert_one_line, cli, fifo, listing, scene, thin_png, unix_socket
from vlmsam.cli.batch import expand, unique_stems

RED = "the red square"
FAST = ("--max-new-tokens", "6")


def predictions(out) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_stems_are_unique_in_the_whole_batch():
    jobs = [("A/a.jpg", RED), ("B/a.jpg", RED), ("C/a_2.jpg", RED), ("D/A.png", RED), ("a.jpg", "another request"),
            ("E/.vlmsam-written.png", RED), ("http://x.org/cat.jpg?size=2", RED)]
    stems = unique_stems(jobs)
    assert stems == ["a", "a_2", "a_2_2", "A_3", "a_4", ".vlmsam-written_2", "cat"]
    assert len({s.casefold() for s in stems}) == len(stems)  # also where case is ignored


def test_an_existing_file_wins_over_glob_expansion(tmp_path):
    for name in ("glob[1].png", "glob1.png"):
        scene(tmp_path / name)
    assert expand(str(tmp_path / "glob[1].png")) == [str(tmp_path / "glob[1].png")]
    assert expand(str(tmp_path / "glob*.png")) == [str(tmp_path / "glob1.png"), str(tmp_path / "glob[1].png")]


def test_a_batch_skips_what_fails_and_keeps_the_rest(tmp_path, capsys):
    a, b, c = scene(tmp_path / "A" / "a.png"), scene(tmp_path / "B" / "a.png", 5), scene(tmp_path / "C" / "a_2.png", 10)
    taken = scene(tmp_path / "D" / "taken.png")
    thin, pipe = thin_png(tmp_path / "D" / "thin.png"), fifo(tmp_path / "D" / "pipe.png")
    out = tmp_path / "o"
    out.mkdir()
    (out / "taken.json").write_text("the user's own notes")
    rc, text, err = cli(capsys, "segment", a, thin, b, pipe, taken, c, RED, "--out", out, *FAST)
    assert rc == 1, err
    skipped = [line for line in err if line.startswith("skipped: ")]
    assert len(skipped) == 3 and len(err) == 3, err
    assert "thin.png" in skipped[0] and "pipe.png" in skipped[1]
    assert "taken.json" in skipped[2] and "was not written by vlmsam" in skipped[2] and "pick another --out" in skipped[2]
    lines = predictions(out)
    assert [x["stem"] for x in lines] == ["a", "a_2", "a_2_2"] and [x["image"] for x in lines] == ["a", "a", "a_2"]
    assert all(x["query"] == RED and "answer" in x and "masks" in x for x in lines)
    for stem in ("a", "a_2", "a_2_2"):
        assert json.loads((out / f"{stem}.json").read_text())["image"] == stem
    assert (out / "taken.json").read_text() == "the user's own notes" and not (out / "taken_overlay.jpg").exists()
    assert "3 answer(s) for 3 image(s)" in text and "3 image(s) skipped" in text


def test_a_killed_batch_resumes_to_the_same_predictions(tmp_path, capsys):
    import torch

    imgs = tmp_path / "imgs"
    colours = [(230, 30, 30), (30, 30, 230), (30, 200, 30), (230, 200, 30)]
    for k in range(12):
        scene(imgs / f"s{k:02d}.png", k % 6, colours[k % 4])
    full, killed = tmp_path / "full", tmp_path / "killed"
    rc, _, err = cli(capsys, "segment", imgs, RED, "--out", full, *FAST)
    assert rc == 0, err

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "vlmsam", "segment", str(imgs), RED, "--out", str(killed), *FAST],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    journal = killed / "predictions.jsonl"
    while proc.poll() is None:  # until its first answer is on disk
        if journal.is_file() and b"\n" in journal.read_bytes():
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = journal.read_bytes().count(b"\n")
    assert 1 <= done < 12
    with open(journal, "ab") as f:
        f.write(b'{"image": "s11", "stem": "s1')  # a line torn by the kill
    (killed / ".vlmsam-set-orphan.tmp").write_bytes(b"half a mask")  # a temporary a killed write leaves

    rc, text, err = cli(capsys, "segment", imgs, RED, "--out", killed, *FAST, "--resume")
    assert rc == 0, err
    assert f"{12 - done} answer(s) for {12 - done} image(s)" in text and f"{done} kept from an earlier run" in text
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]
    by_stem = sorted(predictions(killed), key=lambda x: x["stem"])
    assert by_stem == sorted(predictions(full), key=lambda x: x["stem"])
    assert [x["stem"] for x in predictions(killed)] == [f"s{k:02d}" for k in range(12)]  # job order
    assert all((killed / f"{x['stem']}.json").is_file() for x in by_stem)

    before = journal.read_bytes()  # all done: --resume computes nothing and changes nothing
    rc, text, _ = cli(capsys, "segment", imgs, RED, "--out", killed, *FAST, "--resume")
    assert rc == 0 and "0 answer(s)" in text and journal.read_bytes() == before
    rc, _, _ = cli(capsys, "segment", imgs / "s00.png", imgs / "s01.png", RED, "--out", killed, *FAST)  # no --resume: anew
    assert rc == 0 and [x["stem"] for x in predictions(killed)] == ["s00", "s01"]


def test_an_out_holding_the_inputs_is_refused(tmp_path, capsys):
    user = tmp_path / "userdir"
    scene(user / "photo.png")
    scene(user / "other.png", 5)
    (user / "photo_mask_3.png").write_bytes(b"the user's mask")
    before = listing(user)
    rc, _, err = cli(capsys, "segment", *sorted(user.glob("*.png")), RED, "--out", user, *FAST)
    assert_one_line(rc, err, "holds the input image", "pick another --out")
    assert listing(user) == before


def test_a_users_files_in_out_are_never_replaced(tmp_path, capsys):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "photo.json").write_text('{"mine": true}')
    (user / "photo_mask_3.png").write_bytes(b"the user's mask")
    before = listing(user)
    rc, _, err = cli(capsys, "segment", scene(tmp_path / "in" / "photo.png"), RED, "--out", user, *FAST)
    assert_one_line(rc, err, "photo.json", "was not written by vlmsam", "pick another --out")
    assert listing(user) == before  # nothing partial either: no mask, no overlay, no manifest


def test_undecodable_requests_are_one_line(tmp_path):
    img = scene(tmp_path / "img.png")
    for bad in (b"\xff", b"the red\x01 square"):
        proc = subprocess.run([sys.executable, "-m", "vlmsam", "segment", os.fsencode(img), bad, "--out", os.fsencode(tmp_path / "o")],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "the request" in lines[0]
    assert not (tmp_path / "o").exists()


REQUEST_FILES = [
    ('{"image": "IMG", "request": "the red square"}\n{"image": "IMG", "request": "bad \\udcff"}\n', ":2:", "not valid Unicode"),
    ('{"image": "IMG", "request": "ok"}\n\n' + "[" * 100_000 + "\n", ":3:", "nested deeper than 64"),
    ('{"image": "IMG", "request": "a\\u0007bell"}\n', ":1:", "control character"),
    ('{"image": "IMG", "request": 5}\n', ":1:", "must be strings"),
    ('{"image": "IM\\u0000G", "request": "ok"}\n', ":1:", "image path"),
    ('{"image": "IMG", "request": "ok", "x": NaN}\n', ":1:", "NaN"),
    ('{"image": "IMG", "request": "   "}\n', ":1:", "empty"),
    ('[1, 2]\n', ":1:", "expected {"),
]


@pytest.mark.parametrize("text, where, words", REQUEST_FILES, ids=[w for _, _, w in REQUEST_FILES])
def test_a_bad_requests_line_is_one_line_naming_it(tmp_path, capsys, text, where, words):
    path = tmp_path / "requests.jsonl"
    path.write_text(text.replace("IMG", str(scene(tmp_path / "img.png"))))
    rc, _, err = cli(capsys, "segment", "--requests", path, "--out", tmp_path / "o")
    assert_one_line(rc, err, f"{path}{where}", words)


def test_undecodable_bytes_in_a_requests_file_name_the_line(tmp_path, capsys):
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b'{"image": "a.png", "request": "ok"}\n{"image": "a.png", "request": "caf\xe9"}\n')
    rc, _, err = cli(capsys, "segment", "--requests", path, "--out", tmp_path / "o")
    assert_one_line(rc, err, f"{path}:2:", "not UTF-8")


def test_detector_where_the_design_takes_none(tmp_path, capsys):
    img = scene(tmp_path / "img.png")
    for extra in ((), ("--segmenter", "box_prompt"), ("--segmenter", "proposal_select")):
        rc, _, err = cli(capsys, "segment", img, RED, "--detector", "IDEA-Research/grounding-dino-tiny", *extra, "--out", tmp_path / "o")
        assert_one_line(rc, err, "--detector does not apply to the", "design")
    rc, _, err = cli(capsys, "chat", "--detector", "x", "--out", tmp_path / "o")
    assert_one_line(rc, err, "--detector")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def specials(tmp_path_factory):
    root = tmp_path_factory.mktemp("specials")
    thin_png(root / "thin.png")
    fifo(root / "pipe.png")
    os.symlink("/dev/zero", root / "zero.png")
    with unix_socket(root / "sock.png"):
        yield root


COMMANDS = {"segment": lambda x, o: ("segment", x, RED, "--out", o, *FAST),
            "sam --box": lambda x, o: ("sam", x, "--sam", BUNDLED_SAM, "--box", "1,1,9,9", "--out", o),
            "sam --everything": lambda x, o: ("sam", x, "--sam", BUNDLED_SAM, "--everything", "--out", o)}
SPECIALS = {"thin.png": "aspect", "pipe.png": "not a regular file", "zero.png": "not a regular file",
            "sock.png": "not a regular file", "x" * 300 + ".png": "too long"}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", SPECIALS, ids=lambda n: n[:12])
def test_special_files_as_the_image_are_one_line(specials, tmp_path, capsys, command, name):
    rc, _, err = cli(capsys, *COMMANDS[command](specials / name, tmp_path / "o"), alarm_s=60)
    assert_one_line(rc, err, SPECIALS[name])
    assert not (tmp_path / "o").exists()


def test_a_fifo_as_the_image_does_not_hang_a_real_process(specials, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vlmsam", "segment", str(specials / "pipe.png"), RED, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "pipe.png" in lines[0], proc.stderr[-2000:]


def test_a_name_too_long_for_the_outputs_is_one_line(tmp_path, capsys):
    img = scene(tmp_path / ("y" * 245 + ".png"))  # the image opens; "{stem}_overlay.jpg" is over 255 bytes
    rc, _, err = cli(capsys, "segment", img, RED, "--out", tmp_path / "o", *FAST)
    assert_one_line(rc, err, "the file name is too long", "nothing was written")
    assert [p.name for p in (tmp_path / "o").iterdir()] == []
