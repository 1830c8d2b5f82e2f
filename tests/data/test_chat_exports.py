"""Chat exports (`--documents_format telegram|whatsapp`): exports written here in Telegram Desktop's
and WhatsApp's shapes become conversations, then a dialog dataset whose trained tokens are exactly
the persona's turns."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmfast.data import chat_exports
from lmfast.data.chat_exports import ChatExportError, ChatOptions, read_splits, redact
from lmfast.data.prepare import PrepareConfig, PrepareError, prepare
from lmfast.models.dataset import PreparedDataset
from tests.data.chat_export_files import (
    WHATSAPP_LOCALES,
    WHATSAPP_ORDERS,
    Said,
    write_telegram_account,
    write_telegram_chat,
    write_whatsapp,
)
from tests.data.test_dialogs import dialog_config

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "data" / "documents" / "dialogs" / "chat_template.jinja"
ANN, BOB, CARL = ("Ann", 11), ("Bob", 22), ("Carl", 33)
HOUR = 3600


def said(at: int, who: tuple[str, int], text: str = "", kind: str = "text", forwarded_from: str = "") -> Said:
    return Said(at, who[0], who[1], text, kind, forwarded_from)


PRIVATE = [
    said(0, ANN, "hi Bob, are you coming tonight?"),
    said(10, BOB, "hey Ann"),
    said(12, BOB, "yes, around eight", "entities"),
    said(20, ANN, kind="sticker"),
    said(30, ANN, "great, bring the cake"),
    said(40, BOB, "joined", "service"),
    said(50, BOB, "look at this", "photo"),
    said(60, BOB, "the recipe is on page 3", "forwarded", "Cookbook Channel"),
    said(70, BOB, "found it"),
    said(10 * HOUR, ANN, "thanks for yesterday!"),  # a new conversation after the 6 h gap
    said(10 * HOUR + 30, BOB, "any time"),
]
GROUP = [
    said(0, ANN, "who is up for football on Sunday?"),
    said(5, CARL, "me"),
    said(9, ANN, "Bob?"),
    said(20, BOB, "count me in"),
    said(25, CARL, "10 am at the park"),
    said(30, BOB, "see you there"),
]


def options(**overrides) -> ChatOptions:
    return ChatOptions(**{"persona": "Bob", **overrides})


def conversations_of(path: Path, fmt: str, **overrides) -> tuple[list, chat_exports.ChatSplits]:
    splits = read_splits(fmt, path, path, 0.0, options(**overrides), "strict")
    return splits.conversations["train"], splits


def test_a_private_telegram_chat_becomes_alternating_turns_with_the_persona_as_assistant(tmp_path):
    path = write_telegram_chat(tmp_path / "result.json", "Ann", "personal_chat", PRIVATE)
    conversations, splits = conversations_of(path, "telegram")
    assert conversations == [
        [
            {"role": "user", "content": "hi Bob, are you coming tonight?"},
            {"role": "assistant", "content": "hey Ann\nyes, around eight"},
            {"role": "user", "content": "great, bring the cake"},
            {"role": "assistant", "content": "look at this"},  # the photo's caption; the photo dropped
            {"role": "user", "content": "Cookbook Channel: the recipe is on page 3"},  # forwarded: not Bob's
            {"role": "assistant", "content": "found it"},
        ],
        [{"role": "user", "content": "thanks for yesterday!"}, {"role": "assistant", "content": "any time"}],
    ]
    keys = splits.description()
    assert keys["persona_id"] == "user22" and keys["persona_name"] == "Bob"
    assert keys["chat_train_messages_read"] == len(PRIVATE) == 11
    assert keys["chat_train_messages_kept"] == 9
    assert keys["chat_train_messages_dropped"] == {"service": 1, "sticker": 1}
    # by id, too; media marked instead of dropped
    marked, _ = conversations_of(path, "telegram", persona="22", media="mark")
    assert marked[0][2] == {"role": "user", "content": "[sticker]\ngreat, bring the cake"}
    assert marked[0][3] == {"role": "assistant", "content": "[photo] look at this"}
    # no gap split: one conversation
    whole, _ = conversations_of(path, "telegram", gap_minutes=0)
    assert whole == [conversations[0] + conversations[1]]


def test_a_group_names_each_speaker_of_the_user_turns(tmp_path):
    path = write_telegram_chat(tmp_path / "result.json", "Football", "private_supergroup", GROUP)
    conversations, _ = conversations_of(path, "telegram")
    assert conversations == [
        [
            {"role": "user", "content": "Ann: who is up for football on Sunday?\nCarl: me\nAnn: Bob?"},
            {"role": "assistant", "content": "count me in"},
            {"role": "user", "content": "Carl: 10 am at the park"},
            {"role": "assistant", "content": "see you there"},
        ]
    ]


def test_the_full_account_export_takes_its_owner_as_the_persona_by_default(tmp_path):
    others = [said(0, ANN, "hello"), said(5, CARL, "hi Ann")]  # Bob never speaks there: dropped
    path = write_telegram_account(
        tmp_path / "result.json",
        said(0, BOB),
        {
            "Ann": ("personal_chat", PRIVATE),
            "Football": ("private_supergroup", GROUP),
            "Ann and Carl": ("private_group", others),
            "Saved Messages": ("saved_messages", [said(0, BOB, "buy milk"), said(9, BOB, "call mum")]),
        },
    )
    splits = read_splits("telegram", path, path, 0.0, ChatOptions(), "strict")
    keys = splits.description()
    assert splits.persona == ("user22", "Bob")
    assert keys["chat_train_chats"] == 3 and len(splits.conversations["train"]) == 3
    assert keys["chat_train_messages_read"] == len(PRIVATE) + len(GROUP) + len(others) + 2
    assert keys["chat_train_messages_dropped"]["in_conversation_without_persona"] == 2
    assert keys["chat_train_messages_dropped"]["saved_messages"] == 2  # notes to oneself are no dialog
    assert splits.conversations["train"][2][0]["content"].startswith("Ann: who is up")


@pytest.mark.parametrize("locale", sorted(WHATSAPP_LOCALES))
def test_whatsapp_in_three_locales_gives_the_telegram_conversations(tmp_path, locale):
    telegram, _ = conversations_of(
        write_telegram_chat(tmp_path / "t.json", "Ann", "personal_chat", PRIVATE), "telegram"
    )
    path = write_whatsapp(tmp_path / f"WhatsApp Chat with Ann ({locale}).txt", locale, PRIVATE)
    text = path.read_text(encoding="utf-8")
    assert "<Media omitted>" in text or "sticker omitted" in text  # the export's own shape
    conversations, splits = conversations_of(path, "whatsapp")
    # WhatsApp's export replaces a photo and its caption by "<Media omitted>" and does not mark
    # forwards: the forwarded line is Bob's there
    expected = json.loads(json.dumps(telegram))
    expected[0][3:] = [{"role": "assistant", "content": "the recipe is on page 3\nfound it"}]
    assert conversations == expected
    keys = splits.description()
    assert keys["chat_train_date_order"].startswith(WHATSAPP_ORDERS[locale])
    assert "detected" in keys["chat_train_date_order"]
    dropped = keys["chat_train_messages_dropped"]
    assert dropped.get("service") == 2 and dropped.get("media", 0) + dropped.get("sticker", 0) == 2
    # asked for explicitly: taken as given, and said so
    _, forced = conversations_of(path, "whatsapp", date_order=WHATSAPP_ORDERS[locale])
    assert (
        forced.description()["chat_train_date_order"] == f"{WHATSAPP_ORDERS[locale]} (--whatsapp_date_order)"
    )


def test_whatsapp_multiline_messages_and_ambiguous_dates(tmp_path):
    path = tmp_path / "chat.txt"
    path.write_text(
        "1/2/24, 9:00 AM - Ann: first line\nsecond line\n\n1/2/24, 9:01 AM - Bob: two\nlines\n"
        "1/2/24, 9:02 AM - Ann: This message was deleted\n",
        encoding="utf-8",
    )
    conversations, splits = conversations_of(path, "whatsapp")
    assert conversations == [
        [
            {"role": "user", "content": "first line\nsecond line"},
            {"role": "assistant", "content": "two\nlines"},
        ]
    ]
    keys = splits.description()
    assert keys["chat_train_date_order"].startswith("DMY (ambiguous")
    assert keys["chat_train_messages_dropped"] == {"deleted": 1}


def test_odd_messages_are_counted_and_skipped(tmp_path):
    path = write_telegram_chat(tmp_path / "result.json", "Ann", "personal_chat", PRIVATE[:3])
    data = json.loads(path.read_text(encoding="utf-8"))
    data["messages"] += [
        {"id": 90, "type": "poll_result", "date_unixtime": "1700000100"},
        {"id": 91, "type": "message", "date_unixtime": "1700000101", "from": "Ann", "from_id": "user11", "text": "  "},
        {"id": 92, "type": "message", "date_unixtime": "1700000102", "from": "Ann", "from_id": "user11", "text": "x" * 9000},
        {"id": 93, "type": "message", "from": "Ann", "from_id": "user11", "text": "when?"},
        "not a message",
    ]  # fmt: skip
    path.write_text(json.dumps(data), encoding="utf-8")
    _, splits = conversations_of(path, "telegram")
    keys = splits.description()
    assert keys["chat_train_messages_dropped"] == {
        "unknown_type": 1,
        "empty": 1,
        "huge": 1,
        "no_date": 1,
        "not_a_message": 1,
    }
    assert keys["chat_train_messages_kept"] == 3


def test_redact_replaces_emails_links_and_phone_numbers():
    text = "mail ann.b+x@mail.example.org, call +1 (555) 123-4567 or 8 916 123-45-67, see https://t.me/x?y=1"
    assert redact(text) == "mail [email], call [phone] or [phone], see [link]"
    assert redact("on 14.11.2023 at 10:30, 3 of 12345 items") == "on 14.11.2023 at 10:30, 3 of 12345 items"


# --- property: nothing lost, nothing duplicated, the persona's turns are exactly the masked ones ---

SPEAKERS = [ANN, BOB, CARL]
message_strategy = st.tuples(
    st.integers(0, 3 * HOUR),  # seconds since the previous message
    st.sampled_from(SPEAKERS),
    st.sampled_from(["text", "text", "entities", "sticker", "photo", "service", "forwarded", "empty"]),
    st.text(alphabet="abc xyz", max_size=12),
)


def build(draws: list) -> list[Said]:
    out, at = [], 0
    for k, (gap, who, kind, words) in enumerate(draws):
        at += gap
        text = "" if kind in ("sticker", "empty") else f"m{k} {words}".strip()
        out.append(
            said(at, who, text, "text" if kind == "empty" else kind, "Someone" if kind == "forwarded" else "")
        )
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message_strategy, max_size=40), st.sampled_from(["private_supergroup", "personal_chat"]))
def test_every_message_is_kept_once_or_counted_dropped(draws, kind):
    messages = build(draws)
    with tempfile.TemporaryDirectory() as directory:
        path = write_telegram_chat(Path(directory) / "result.json", "chat", kind, messages)
        export = chat_exports.load_export(path, "--documents_train_file", "telegram", options(gap_minutes=60))
        try:
            persona = chat_exports.resolve_persona(export, "Bob")
        except ChatExportError:
            assert not any(
                m.name == "Bob" and m.kind in ("text", "entities", "photo") and m.text for m in messages
            )
            return
        conversations = list(
            chat_exports.iter_chat_conversations(export, persona[0], options(gap_minutes=60))
        )
    stats = export.stats
    assert stats.messages_read == len(messages)
    assert stats.messages_kept + sum(stats.dropped.values()) == len(messages)
    lines = [
        (turn["role"], line) for c in conversations for turn in c for line in turn["content"].split("\n")
    ]
    ids = [re.match(r"(?:\w+: )?(m\d+)", line).group(1) for _, line in lines]
    assert len(ids) == len(set(ids)) == stats.messages_kept  # none duplicated, every kept one present
    by_id = {f"m{k}": m for k, m in enumerate(messages)}
    for role, line in lines:
        m = by_id[re.match(r"(?:\w+: )?(m\d+)", line).group(1)]
        assert m.kind not in ("service", "sticker") and m.text
        mine = m.name == "Bob" and m.kind != "forwarded"
        assert (role == "assistant") == mine  # the persona's own messages, and only those, are assistant
    for c in conversations:  # turns alternate and every conversation has a persona turn
        roles = [t["role"] for t in c]
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False)) and "assistant" in roles
    # dropped messages are those that cannot be kept, or those of a conversation without Bob
    droppable = sum(1 for m in messages if m.kind in ("service", "sticker") or not m.text)
    assert stats.messages_kept + droppable + stats.dropped["in_conversation_without_persona"] == len(messages)


@functools.lru_cache(maxsize=1)
def gpt2_renderer() -> tuple:
    """The GPT-2 tokenizer and the bundled template's renderer, loaded once for the property below."""
    from lmfast.data.dialogs import DialogRenderer, load_chat_template
    from lmfast.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("GPT2Tokenizer")
    return tokenizer, DialogRenderer(load_chat_template(str(TEMPLATE), "GPT2Tokenizer"), tokenizer)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(message_strategy, min_size=1, max_size=30),
    st.sampled_from(["private_supergroup", "personal_chat"]),
)
def test_the_masked_tokens_are_exactly_the_persona_messages(draws, kind):
    """Through the dialog writer itself: the loss mask covers the persona's kept messages, all of
    them and nothing else (by the message ids the texts carry)."""
    import numpy as np

    from lmfast.data.dialogs import write_dialog_split

    messages = build(draws)
    tokenizer, renderer = gpt2_renderer()
    with tempfile.TemporaryDirectory() as directory:
        path = write_telegram_chat(Path(directory) / "result.json", "chat", kind, messages)
        try:
            splits = read_splits("telegram", path, path, 0.0, options(gap_minutes=60), "strict")
        except ChatExportError:
            return  # Bob says nothing usable: the error is tested above
        out = Path(directory) / "train"
        write_dialog_split(path, "--documents_train_file", out, tokenizer, renderer, dtype=np.dtype(np.uint16),
                           max_len=1 << 20, min_len=1, conversations=splits.conversations["train"])  # fmt: skip
        corpus, mask = np.load(out / "corpus.npy"), np.load(out / "loss_mask.npy")
    trained = tokenizer.backend.decode(corpus[mask == 1].tolist(), skip_special_tokens=False)
    untrained = tokenizer.backend.decode(corpus[mask == 0].tolist(), skip_special_tokens=False)
    kept = {re.match(r"(?:\w+: )?(m\d+)", line).group(1) for c in splits.conversations["train"]
            for t in c for line in t["content"].split("\n")}  # fmt: skip
    mine = {f"m{k}" for k, m in enumerate(messages) if m.name == "Bob" and m.kind != "forwarded"} & kept
    assert set(re.findall(r"m\d+", trained)) == mine
    assert not set(re.findall(r"m\d+", untrained)) & mine
    assert trained.count("<|endoftext|>") == sum(
        t["role"] == "assistant" for c in splits.conversations["train"] for t in c
    )


# --- prepare: the dataset, its masks, its description, and bad input ---


def chat_config(root: Path, train: Path, fmt: str = "telegram", **overrides) -> PrepareConfig:
    """The dialog tests' config, read from a chat export as Bob."""
    values = dict(
        documents_train_file=train,
        documents_valid_file=train,
        documents_format=fmt,
        persona="Bob",
        dataset_name="me",
    )
    return dialog_config(root, **{**values, **overrides})


def test_prepare_trains_exactly_on_the_persona_turns(tmp_path):
    path = write_telegram_account(
        tmp_path / "result.json",
        said(0, BOB),
        {"Ann": ("personal_chat", PRIVATE), "Football": ("private_supergroup", GROUP)},
    )
    dataset = PreparedDataset(prepare(chat_config(tmp_path / "datasets", path, redact=True)))
    splits = read_splits("telegram", path, path, 0.0, options(), "strict")
    conversations = splits.conversations["train"]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(dataset.directory / "tokenizer" / "tokenizer.json"))
    assert len(dataset.train) == len(conversations) == 3
    for i, conversation in enumerate(conversations):
        ids, mask = dataset.train[i], dataset.train.sample_loss_mask(i)
        trained = tokenizer.decode(ids[mask == 1].tolist(), skip_special_tokens=False)
        assert trained == "".join(
            t["content"] + "<|endoftext|>" for t in conversation if t["role"] == "assistant"
        )
        text = tokenizer.decode(ids.tolist(), skip_special_tokens=False)
        assert "<|user|>\nAnn: who is up" in text or "<|user|>\nhi Bob" in text or "thanks" in text
    description = dataset.description
    assert description["documents_format"] == "telegram" and description["persona_name"] == "Bob"
    assert description["chat_train_messages_kept"] == 15 and description["number_of_train_conversations"] == 3
    assert description["input_files"][0]["format"] == "telegram"
    assert description["number_of_train_trained_tokens"] == int(dataset.train.loss_mask.sum())


def test_valid_fraction_holds_out_whole_conversations(tmp_path):
    messages = [said(k * 7 * HOUR + d, (ANN, BOB)[d % 2], f"c{k} m{d}") for k in range(40) for d in range(4)]
    path = write_telegram_chat(tmp_path / "result.json", "Ann", "personal_chat", messages)
    config = chat_config(tmp_path / "datasets", path, documents_valid_file=[], valid_fraction=0.25)
    dataset = PreparedDataset(prepare(config))
    assert len(dataset.train) + len(dataset.valid) == 40
    assert 0 < len(dataset.valid) < 20
    assert dataset.description["number_of_valid_conversations"] == len(dataset.valid)


def test_flags_are_checked_before_any_work(tmp_path):
    path = tmp_path / "x.json"
    with pytest.raises(PrepareError, match="--chat_media: must be drop or mark"):
        chat_config(tmp_path, path, chat_media="keep")
    with pytest.raises(PrepareError, match="--whatsapp_date_order: must be one of"):
        chat_config(tmp_path, path, whatsapp_date_order="DDMM")
    with pytest.raises(PrepareError, match="--chat_gap_minutes: must be >= 0"):
        chat_config(tmp_path, path, chat_gap_minutes=-1)
    with pytest.raises(PrepareError, match="--num_shards: does not work with --documents_format telegram"):
        chat_config(tmp_path, path, num_shards=2)


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmfast.prepare", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, Path, str, list[str], str]]:
    """name -> (train file, valid file, format, extra flags, what the one error line says)."""
    not_telegram = tmp_path / "list.json"
    not_telegram.write_text('[{"messages": []}]', encoding="utf-8")
    not_whatsapp = tmp_path / "notes.txt"
    not_whatsapp.write_text("shopping list\nmilk\n", encoding="utf-8")
    private = write_telegram_chat(tmp_path / "result.json", "Ann", "personal_chat", PRIVATE)
    silent = [said(0, BOB, kind="sticker"), said(5, ANN, "anyone?")]
    silent_file = write_telegram_chat(tmp_path / "silent.json", "Ann", "personal_chat", silent)
    return {
        "not telegram": (not_telegram, private, "telegram", [], ": not a Telegram export"),
        "not whatsapp": (not_whatsapp, not_whatsapp, "whatsapp", [], ": not a WhatsApp chat export"),
        "unknown persona": (private, private, "telegram", ["--persona", "Zoe"], "'Zoe' never speaks in"),
        "no usable turns": (
            private,
            silent_file,
            "telegram",
            [],
            "has no usable conversation: Bob never speaks",
        ),
    }


@pytest.mark.parametrize("case", ["not telegram", "not whatsapp", "unknown persona", "no usable turns"])
def test_bad_input_is_one_line_naming_the_file_exit_2_nothing_written(tmp_path, case):
    train, valid, fmt, extra, says = bad_inputs(tmp_path)[case]
    root = tmp_path / "datasets"
    result = run_prepare(
        "--documents_format", fmt, "--documents_train_file", str(train), "--documents_valid_file", str(valid),
        "--persona", "Bob", "--tokenizer_cls_name", "GPT2Tokenizer", "--chat_template", str(TEMPLATE),
        "--max_sample_length", "256", "--datasets_root", str(root), *extra,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    bad = valid if case == "no usable turns" else train
    assert len(errors) == 1 and says in errors[0] and str(bad) in errors[0], result.stderr
    assert not root.exists()


def test_the_docs_page_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """docs/chat-exports.md's prepare commands, on the bundled exports, print what the page shows."""
    import shlex
    import shutil

    from lmfast.data.cli import main

    page = (REPO_ROOT / "docs" / "chat-exports.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", page, flags=re.DOTALL)
    commands = [re.sub(r"\\\n\s*", " ", b).strip() for b in blocks if b.startswith("lmfast prepare")]
    assert len(commands) == 2
    shutil.copytree(REPO_ROOT / "data" / "documents", tmp_path / "data" / "documents")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)[2:]
        assert main(argv) == 0
        name = argv[argv.index("--dataset_name") + 1]
        assert capsys.readouterr().out.strip() == f"data/datasets/{name}/0"
        assert f"data/datasets/{name}/0" in page
    description = json.loads((tmp_path / "data/datasets/me/0/description.json").read_text())
    assert description["persona_name"] == "Bob" and description["chat_train_messages_dropped"] == {
        "service": 1,
        "sticker": 1,
    }
    assert '`{"service": 1, "sticker": 1}` above' in page


def test_a_telegram_export_folder_and_a_whatsapp_zip_are_read_as_their_chat(tmp_path):
    import zipfile

    folder = tmp_path / "ChatExport_2024-01-01"
    folder.mkdir()
    write_telegram_chat(folder / "result.json", "Ann", "personal_chat", PRIVATE)
    config = chat_config(tmp_path / "datasets", folder)
    assert PreparedDataset(prepare(config)).description["chat_train_messages_kept"] == 9
    text = write_whatsapp(tmp_path / "_chat.txt", "en_GB_ios", PRIVATE)
    archive = tmp_path / "WhatsApp Chat - Ann.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(text, "_chat.txt")
    assert conversations_of(archive, "whatsapp")[0] == conversations_of(text, "whatsapp")[0]
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("other.txt", "x")
    with pytest.raises(ChatExportError, match="holds one chat .txt, this one has 2"):
        conversations_of(archive, "whatsapp")


def test_an_export_too_big_to_parse_in_memory_is_refused_before_reading(tmp_path):
    path = tmp_path / "result.json"
    with path.open("wb") as file:
        file.truncate(chat_exports.MAX_EXPORT_BYTES + 1)  # sparse: nothing is written or read
    with pytest.raises(ChatExportError, match=r"result.json: 1073741825 bytes is over the 1 GiB"):
        conversations_of(path, "telegram")


def test_year_first_dates_and_a_name_two_speakers_share(tmp_path):
    swedish = tmp_path / "chat.txt"
    swedish.write_text("2024-01-02 09:00 - Ann: hej\n2024-01-02 09:01 - Bob: hej hej\n", encoding="utf-8")
    conversations, splits = conversations_of(swedish, "whatsapp")
    assert conversations == [
        [{"role": "user", "content": "hej"}, {"role": "assistant", "content": "hej hej"}]
    ]
    assert splits.description()["chat_train_date_order"] == "YMD (detected: the year comes first)"
    two_bobs = write_telegram_chat(
        tmp_path / "result.json",
        "Bobs",
        "private_group",
        [said(0, BOB, "hi"), said(5, ("Bob", 23), "hi too")],
    )
    with pytest.raises(ChatExportError, match=r"'Bob' names 2 speakers .* \(user22, user23\); pass the id"):
        conversations_of(two_bobs, "telegram")
    assert conversations_of(two_bobs, "telegram", persona="user23")[0] == [
        [{"role": "user", "content": "Bob: hi"}, {"role": "assistant", "content": "hi too"}]
    ]
