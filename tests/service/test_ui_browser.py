"""The /ui page in a real headless browser (Debian's Chromium driven by Playwright) against a
real server on loopback serving the tiny test model.

What the page shows is checked against what the API answers: one token cell per scored token
carrying the energy /v1/score gave it, the re-ranked order /v1/rerank gives, WER as the
project's Python counts it, and n-best files read by the page's JavaScript as the Python
readers read them. Every page is watched for Content-Security-Policy violations and uncaught
errors. With ``ELECTRIC_UI_SCREENSHOTS=1`` the screenshots in docs/img are taken again, on the
embedded model (``ELECTRIC_UI_SCREENSHOT_ARTIFACT`` to use another).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from harness import ROOT
from live_server import live_server

from service.rerank.metrics import word_errors
from service.rerank.nbest import NbestFormatError, read_nbest
from service.settings import default_artifact

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
except ImportError:
    pytest.skip("Playwright for Python is not installed: `.venv/bin/pip install playwright` "
                "(it is in the dev lock)", allow_module_level=True)

CHROMIUM = Path(os.environ.get("ELECTRIC_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (Debian), or set "
                "ELECTRIC_CHROMIUM to a Chromium or Chrome binary", allow_module_level=True)

WAIT_MS = 10_000
KEY = "ui-test-key"
VARIANT = re.compile("^variant$")  # a dt of the model panel (not "variants")
SCREENSHOTS = os.environ.get("ELECTRIC_UI_SCREENSHOTS") == "1"


@dataclass
class Watched:
    """A page and what its console and CSP reporting said."""

    page: Page
    errors: list[str] = field(default_factory=list)
    """Console errors and uncaught exceptions."""

    def watch(self) -> Watched:
        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.errors.append(message.text)

        self.page.on("console", console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        return self

    def csp_violations(self) -> list[str]:
        return [e for e in self.errors if "Content Security Policy" in e]

    def unexpected(self) -> list[str]:
        """Errors besides the browser's note on a refused request (an expected 4xx)."""
        return [e for e in self.errors if "the server responded with a status of 4" not in e]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=["--no-sandbox"], timeout=30_000)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def server(tiny_artifact: Path) -> Iterator[str]:
    with live_server(tiny_artifact) as url:
        yield url


@pytest.fixture(scope="module")
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10) as client:
        yield client


@contextmanager
def open_page(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(WAIT_MS)
    try:
        watched = Watched(context.new_page()).watch()
        yield watched
        assert not watched.csp_violations(), watched.csp_violations()
        assert not watched.unexpected(), watched.unexpected()
    finally:
        context.close()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Watched]:
    with open_page(browser) as watched:
        yield watched


def score_via_page(page: Page, text: str) -> None:
    """Type ``text`` into the box with the keyboard and submit with Ctrl+Enter."""
    box = page.locator("#sentences")
    box.fill("")
    box.focus()
    lines = text.split("\n")
    for i, line in enumerate(lines):
        page.keyboard.type(line)
        if i < len(lines) - 1:
            page.keyboard.press("Enter")
    page.keyboard.press("Control+Enter")


def cards(page: Page, count: int) -> list[dict[str, Any]]:
    """Per sentence card: its score, the text shown and every token cell's energy and text."""
    page.locator("#score-results .card").nth(count - 1).wait_for(timeout=WAIT_MS)
    got: list[dict[str, Any]] = page.eval_on_selector_all("#score-results .card", """
        cards => cards.map(card => ({
          score: Number(card.dataset.score), best: card.classList.contains('best'),
          text: card.querySelector('.heat').textContent,
          tokens: Array.from(card.querySelectorAll('.heat .tok'), t => ({
            energy: t.dataset.energy, piece: t.textContent, token: t.dataset.token,
            title: t.title}))}))""")
    assert len(got) == count
    return got


def test_score_shows_one_cell_per_token_with_the_api_energies(tab: Watched, server: str,
                                                             api: httpx.Client) -> None:
    page = tab.page
    page.goto(f"{server}/ui")
    sentences = ["the cat sat on the mat", "the cat sat on the  mats 🐈 today",
                 "mat the on sat cat the"]
    score_via_page(page, "\n".join(sentences))
    shown = cards(page, len(sentences))
    answer = api.post("/v1/score", json={"sentences": sentences}).json()["results"]
    for card, text, result in zip(shown, sentences, answer):
        assert len(card["tokens"]) == result["num_tokens"] == len(result["energies"])
        for cell, energy, token in zip(card["tokens"], result["energies"], result["tokens"]):
            assert abs(float(cell["energy"]) - energy) <= 1e-6
            assert cell["token"] == token and f"energy {energy:.4f}" in cell["title"]
        # The heat map is the original text: offsets put every piece back where it was.
        assert card["text"] == text
        assert [c["piece"] for c in card["tokens"]] == [text[a:b] for a, b in result["offsets"]]
        assert card["score"] == pytest.approx(result["score"], abs=1e-9)
    best = max(range(len(answer)), key=lambda i: answer[i]["score"])
    assert [c["best"] for c in shown] == [i == best for i in range(len(answer))]
    legend = page.locator("#legend")
    assert legend.is_visible() and len(legend.locator(".swatch").all()) == 9
    low = min(min(r["energies"]) for r in answer)
    assert f"{low:.4f}" in legend.inner_text()
    # Keyboard: Tab reaches a sentence's first token, arrows walk it; the detail line follows.
    first = page.locator("#score-results .card").first.locator(".tok")
    first.first.focus()
    page.keyboard.press("ArrowRight")
    second = answer[0]["energies"][1]
    assert page.evaluate("document.activeElement.dataset.energy") == first.nth(1) \
        .get_attribute("data-energy")
    assert f"energy {second:.4f}" in page.locator("#score-detail").inner_text()
    # The link now holds the sentences, and the model panel came from /v1/model.
    assert "text=" in page.url
    panel = page.locator("#model-panel")
    panel.locator("dt", has_text=VARIANT).wait_for(timeout=WAIT_MS)
    assert "tiny-test" in panel.inner_text() and "fp32" in panel.inner_text()


def test_refusals_are_shown_with_their_message(tab: Watched, server: str) -> None:
    page = tab.page
    page.goto(f"{server}/ui")
    error = page.locator("#score-error")
    score_via_page(page, "the cat\n   ")
    error.wait_for(state="visible", timeout=WAIT_MS)
    text = error.inner_text()
    assert "422 invalid_input" in text and "sentences[1] (line 2)" in text, text
    assert "empty or whitespace-only" in text
    long = " ".join(["cat"] * 100)
    page.locator("#sentences").fill(long)
    page.locator("#score-button").click()
    expect(error).to_contain_text("at most 62", timeout=WAIT_MS)  # the tiny model's limit
    assert "422 invalid_input: sentences[0] (line 1) has 100 tokens" in error.inner_text()
    assert not page.locator("#score-results .card").all()
    assert not tab.unexpected() and not tab.csp_violations()
    # The CSP is enforced, so that finding no violation above means something.
    with page.expect_console_message(lambda m: "Content Security Policy" in m.text,
                                     timeout=WAIT_MS):
        page.evaluate("""() => { const s = document.createElement('script');
                                 s.textContent = 'window.injected = 1'; document.body.append(s); }""")
    assert page.evaluate("window.injected") is None, "an inline script ran"
    assert tab.csp_violations()
    tab.errors.clear()  # that one was on purpose


def test_deep_link_scores_at_once(tab: Watched, server: str, api: httpx.Client) -> None:
    sentences = ["a dog ran to the old house", "a dog ran to the new house"]
    tab.page.goto(f"{server}/ui?text={quote(chr(10).join(sentences))}")
    shown = cards(tab.page, 2)
    assert tab.page.locator("#sentences").input_value() == "\n".join(sentences)
    answer = api.post("/v1/score", json={"sentences": sentences}).json()["results"]
    assert [len(c["tokens"]) for c in shown] == [r["num_tokens"] for r in answer]


# Inputs for the parity of the page's readers (nbest.js) with service/rerank/nbest: each format's
# ordinary layout and the corners the port has to get right (CRLF, Python's whitespace and
# float syntax, key order, blocks, log lines).
ESPNET = json.dumps({
    "10": {"hyp_2": {"score": -2.5, "text": "b"}, "hyp_1": {"score": -1.0, "text": "a"},
           "hyp_10": {"score": -9, "text": "j"}, "ref": "a"},
    "2": {"hyp_1": {"text": "z"}, "note": "no score"},
    "utt-b": {"hyp_1": {"score": 0, "text": "Zoë\u00a0x"}, "other": {"hyp_9": 1}}},
    indent=2, ensure_ascii=False)
SAMPLES = {
    "jsonl": ('{"id": "u1", "reference": "the cat sat", "hypotheses": ["the cat sat", '
              '{"text": "a cat sat", "score": -1.5, "lattice": 7}]}\r\n\n'
              '{"id": 2, "hypotheses": []}\n'
              '{"hypotheses": ["x", "y z", "x"]}\n'
              '{"id": "u3", "hypotheses": [{"text": "b", "score": 2}, {"text": "c", "score": null}]}'),
    "tsv": ("id\ttext\tscore\treference\textra\n"
            "u1\tthe cat sat\t-1.0\tthe cat sat\tx\n"
            "u1\ta cat sat\t\tthe cat sat\ty\r\n"
            "u2\tdog\t 2_5.5e-1 \t\tz\n\n"
            "u1\tthe cats at\t-3\t\t\n"),
    "espnet": ESPNET,
    "kaldi": "utt1-1 the cat sat\nutt1-2 a  cat sat \n\nutt-2-1\u3000dog ran\r\nutt-2-2\n",
    "fairseq": ("2024-01-01 | INFO | fairseq_cli.generate | loading\n"
                "S-0\tdas ist\nT-0\tthat is\nH-0\t-0.5\tthat is\nD-0\t-0.5\tThat is\n"
                "P-0\t-0.2 -0.3\nH-0\t-1.25\tthis is\nD-0\t-1.25\tThis is\n"
                "S-1\tx\nH-1\t-2\t\nE-1_0\tsteps\n"
                "Generate test with beam=2: BLEU4 = 1.0\n"),
    "moses": ("0 ||| the cat sat ||| LM0= -12.5 TM0= -3.1 ||| -8.93\n"
              "0 ||| a cat sat ||| F0= -2.1 ||| -1.75 ||| 0-0 1-1\r\n"
              "\n1 |||  dog  ||| F0= 1 ||| 1e2\n"),
}
SAMPLES["marian"] = SAMPLES["moses"]
SAMPLES["tsv-no-header"] = "0\tthe cat\t-1.5\n0\ta cat\n1\tdog\t+.5\textra\n"
DETECTED = {"marian": "moses", "tsv-no-header": "plain"}
REFUSED = [
    ("jsonl", '{"id": "a", "hypotheses": ["ok"]}\n{"id": "b", "hypotheses": ["ok", 3]}'),
    ("jsonl", '["a", "b"]'),
    ("tsv", "id\ttext\nonly-one-field\n"),
    ("tsv", "0\ta\tnot-a-number\n"),
    ("kaldi", "utt1-1 fine\nnokey words\n"),
    ("kaldi", "u-1 a\nu-1 b\n"),
    ("fairseq", "H-0\tnot-a-number\ttext\n"),
    ("fairseq", "S-3\tx\nD-3\t-1\tx\n"),
    ("moses", "0 ||| a ||| f=1 ||| 1\n0 ||| a ||| f\n"),
    ("moses", "0 ||| a ||| f=1 ||| nan\n"),
    ("espnet", '{"u": {"hyp_1": {"text": 3}}}'),
]

PARSE = """async ([format, text]) => {
  const nbest = await import('./ui/static/nbest.js');
  try { return { lists: nbest.parseNbest(format, text).lists }; }
  catch (exc) { return { error: exc.message, line: exc.line ?? null }; } }"""


def python_lists(fmt: str, text: str, tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / f"{fmt}.txt"
    path.write_bytes(text.encode("utf-8"))
    return [{"id": lst.id, "reference": lst.reference,
             "candidates": [(c.text, c.base_score, c.line) for c in lst.candidates]}
            for lst in read_nbest(fmt, path).lists]


def js_lists(page: Page, fmt: str, text: str) -> list[dict[str, Any]]:
    out = page.evaluate(PARSE, [fmt, text])
    assert "lists" in out, out
    return [{"id": lst["id"], "reference": lst["reference"],
             "candidates": [(c["text"], c["base_score"], c["line"]) for c in lst["candidates"]]}
            for lst in out["lists"]]


def test_page_reads_nbest_files_as_the_python_readers_do(tab: Watched, server: str,
                                                        tmp_path: Path) -> None:
    page = tab.page
    page.goto(f"{server}/ui")
    for name, text in SAMPLES.items():
        fmt = name.split("-")[0]
        want, got = python_lists(fmt, text, tmp_path), js_lists(page, fmt, text)
        if fmt == "espnet":  # JSON has no lines to speak of: messages only
            want = [{**lst, "candidates": [c[:2] for c in lst["candidates"]]} for lst in want]
            got = [{**lst, "candidates": [c[:2] for c in lst["candidates"]]} for lst in got]
        assert got == want, name
        assert sum(len(lst["candidates"]) for lst in want) >= 3, name
        # "detect" finds the format: Marian's is Moses's, and TSV without a header is not told
        # from plain lines (the page says what it read the text as).
        detected = page.evaluate("""async text => (await import('./ui/static/nbest.js'))
                                    .detectFormat(text)""", text)
        assert detected == DETECTED.get(name, fmt), name
    for fmt, text in REFUSED:
        with pytest.raises(NbestFormatError) as refused:
            python_lists(fmt, text, tmp_path)
        out = page.evaluate(PARSE, [fmt, text])
        assert "error" in out, (fmt, text, out)
        if fmt != "espnet":
            assert out["line"] == refused.value.line, (fmt, text, out)
    # Plain lines exist only on the page: lists split by blank lines, "score<TAB>text".
    plain = js_lists(page, "plain", "-1.5\tthe cat\nthe\tcat\r\n\n\n0\t\n a b \n")
    assert plain == [
        {"id": "1", "reference": None, "candidates": [("the cat", -1.5, 1),
                                                      ("the\tcat", None, 2)]},
        {"id": "2", "reference": None, "candidates": [("", 0.0, 5), (" a b ", None, 6)]}]


WER_PAIRS = [("the cat sat", "the cat sat on"), ("a  b\tc", "a b c"), ("x\u00a0y z", "x y z"),
             ("", "a b"), ("one two three", ""), ("  lead  trail ", "lead trail"),
             ("the cat sat on the mat", "cat the sat on mat the")]


def test_nbest_view_ranks_as_the_api_and_counts_wer_as_python(tab: Watched, server: str,
                                                              api: httpx.Client,
                                                              tmp_path: Path) -> None:
    page = tab.page
    page.goto(f"{server}/ui")
    js = page.evaluate("""async pairs => { const wer = await import('./ui/static/wer.js');
                          return pairs.map(([r, h]) => wer.wordErrors(r, h)); }""", WER_PAIRS)
    assert [tuple(x) for x in js] == [word_errors(r, h) for r, h in WER_PAIRS]

    lists = [[(-1.0, "the cat sat on the mat"), (-1.2, "the cat sat on a mat"),
              (-3.0, "cat the sat")],
             [(None, "the dog ran"), (None, "a dog ran"), (None, "dog the ran to")]]
    refs = ["the cat sat on the mat", "the dog ran"]
    text = "\n\n".join("\n".join(t if s is None else f"{s}\t{t}" for s, t in lst)
                       for lst in lists)
    page.locator("#nbest-format").select_option("plain")
    page.locator("#nbest-text").fill(text)
    page.locator("#refs").fill("\n".join(refs) + "\n")
    page.locator("#lm-weight").fill("2")
    page.locator("#length-bonus").fill("0.5")
    page.locator("#nbest-text").focus()
    page.keyboard.press("Control+Enter")
    page.locator("#nbest-results .nbest-list").nth(1).wait_for(timeout=WAIT_MS)
    shown = page.eval_on_selector_all(
        "#nbest-results .nbest-list",
        "ls => ls.map(l => Array.from(l.querySelectorAll('tbody tr'), r => Number(r.dataset.index)))")
    body = {"lists": [{"id": i, "hypotheses": [t if s is None else {"text": t, "score": s}
                                               for s, t in lst]}
                      for i, lst in enumerate(lists)], "lm_weight": 2.0, "length_bonus": 0.5}
    answer = api.post("/v1/rerank", json=body).json()
    assert shown == [[h["index"] for h in lst["hypotheses"]] for lst in answer["lists"]]
    columns = page.eval_on_selector_all(
        "#nbest-results tbody tr", "rs => rs.map(r => Array.from(r.cells, c => c.textContent))")
    ranked = [h for lst in answer["lists"] for h in lst["hypotheses"]]
    assert [c[3:7] for c in columns] == [[f"{h['base_score']:.3f}", f"{h['score']:.3f}",
                                          str(h["num_tokens"]), f"{h['combined']:.3f}"]
                                         for h in ranked]
    used = page.locator(".weights-used").inner_text()
    assert "lm_weight 2" in used and "length_bonus 0.5" in used
    assert f"rank_prior {answer['rank_prior']}" in used
    # WER before (base scores alone, first on ties) and after, as Python counts them.
    errors = {"before": 0, "after": 0}
    for lst, ref in zip(answer["lists"], refs):
        by_index = sorted(lst["hypotheses"], key=lambda h: h["index"])
        before = max(range(len(by_index)), key=lambda i: (by_index[i]["base_score"], -i))
        errors["before"] += word_errors(ref, by_index[before]["text"])[0]
        errors["after"] += word_errors(ref, lst["hypotheses"][0]["text"])[0]
    words = sum(word_errors(ref, "")[1] for ref in refs)
    wer = page.locator(".wer")
    assert float(wer.get_attribute("data-wer-before") or "nan") == \
        pytest.approx(errors["before"] / words, abs=1e-12)
    assert float(wer.get_attribute("data-wer-after") or "nan") == \
        pytest.approx(errors["after"] / words, abs=1e-12)
    assert "before" in wer.inner_text() and "after" in wer.inner_text()
    # A file and a references file, uploaded; the format detected.
    jsonl = tmp_path / "lists.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": f"u{i}", "hypotheses": [t for _, t in lst]})
                               for i, lst in enumerate(lists)) + "\n", encoding="utf-8")
    (tmp_path / "refs.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    page.locator("#nbest-file").set_input_files(jsonl)
    page.locator("#refs-file").set_input_files(tmp_path / "refs.txt")
    expect(page.locator("#nbest-text")).to_have_value(jsonl.read_text(), timeout=WAIT_MS)
    expect(page.locator("#refs")).to_have_value("\n".join(refs) + "\n", timeout=WAIT_MS)
    page.locator("#nbest-format").select_option("auto")
    page.locator("#nbest-button").click()
    expect(page.locator("#nbest-summary")).to_contain_text("Read as jsonl: 2 lists, 6 hypotheses",
                                                           timeout=WAIT_MS)
    expect(page.locator("#nbest-results h3").first).to_have_text("List u0")
    # A file the reader refuses is reported with its line, and nothing is sent.
    page.locator("#nbest-format").select_option("moses")
    page.locator("#nbest-button").click()
    page.locator("#nbest-error").wait_for(state="visible", timeout=WAIT_MS)
    assert "line 1" in page.locator("#nbest-error").inner_text()


def test_api_key_is_asked_for_kept_and_sent(browser: Browser, tiny_artifact: Path) -> None:
    with live_server(tiny_artifact, ELECTRIC_API_KEYS=KEY) as url, open_page(browser) as tab:
        page = tab.page
        page.goto(f"{url}/ui?text=the%20cat%20sat")
        panel = page.locator("#key-panel")
        panel.wait_for(state="visible", timeout=WAIT_MS)
        assert "401 unauthorized" in page.locator("#model-error").inner_text()
        page.locator("#api-key").fill("wrong-key")
        page.keyboard.press("Enter")
        expect(page.locator("#key-reason")).to_contain_text("refused the key",
                                                            timeout=WAIT_MS)
        assert panel.is_visible()
        page.locator("#api-key").fill(KEY)
        page.keyboard.press("Enter")
        # What was refused runs again with the key: the deep link's sentence and the model.
        (card,) = cards(page, 1)
        assert card["text"] == "the cat sat"
        page.locator("#model-panel dt", has_text=VARIANT).wait_for(timeout=WAIT_MS)
        assert panel.is_hidden() and page.locator("#score-error").is_hidden()
        assert page.evaluate("sessionStorage.getItem('electric-api-key')") == KEY
        page.reload()
        cards(page, 1)  # the key survives a reload of the tab
        assert panel.is_hidden()


def changed_lists(url: str, count: int) -> list[str]:
    """JSONL lines of examples/asr_test.jsonl whose choice re-ranking changes, for a picture
    that shows something."""
    lines = (ROOT / "examples/asr_test.jsonl").read_text(encoding="utf-8").splitlines()[:200]
    lists = [json.loads(line) for line in lines]
    body = {"lists": [{"id": i, "hypotheses": lst["hypotheses"]} for i, lst in enumerate(lists)]}
    with httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/v1/rerank", json=body).json()
    changed = [lines[a["id"]] for a in answer["lists"] if a["hypotheses"][0]["index"] != 0]
    return (changed + lines)[:count]


@pytest.mark.skipif(not SCREENSHOTS, reason="set ELECTRIC_UI_SCREENSHOTS=1 to retake "
                                            "docs/img/ui-*.png")
def test_screenshots_for_the_docs(tab: Watched) -> None:
    artifact = Path(os.environ.get("ELECTRIC_UI_SCREENSHOT_ARTIFACT", default_artifact()))
    with live_server(artifact, ELECTRIC_VARIANT="auto") as url:
        page = tab.page
        pairs = ["The keys to the cabinet are on the table.",
                 "The keys to the cabinet is on the table."]
        page.goto(f"{url}/ui?text={quote(chr(10).join(pairs))}")
        cards(page, 2)
        page.locator("#score-results .tok").nth(6).hover()
        page.locator("#score").screenshot(path=str(ROOT / "docs/img/ui-score.png"))
        page.locator("#nbest-text").fill("\n".join(changed_lists(url, 3)))
        page.locator("#nbest-button").click()
        page.locator("#nbest-results .nbest-list").nth(2).wait_for(timeout=WAIT_MS)
        page.locator("#nbest").screenshot(path=str(ROOT / "docs/img/ui-nbest.png"))
        assert not math.isnan(float(page.locator(".wer").get_attribute("data-wer-after") or 0))
