"""From a Telegram export to the bot answering in a group: export -> `lmfast prepare --documents_format
telegram` -> two LoRA steps of the real SmolLM2 -> `lmfast serve` -> the bot's aiogram client in a
group against the local Bot API peer. The group's answer must be exactly what the server answers
for the group's history with the same settings (slow: real weights)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from lmfast.bot.chat import PLACEHOLDER
from lmfast.data.prepare import prepare
from lmfast.serving.app import create_app
from lmfast.serving.config import ServeConfig
from lmfast.serving.testing import ServerThread
from lmfast.train.config import TrainConfig
from lmfast.train.run import train
from tests.bot.peers import BOT_USER, FakeTelegram, running_bot
from tests.data.chat_export_files import Said, write_telegram_chat

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

GROUP, ANN, CARL, BOB = -100777, 11, 33, 22


def group_export(path: Path) -> Path:
    """A group where Bob (the persona) answers Ann and Carl, over a few days."""
    lines = [
        ("Ann", 11, "who is up for football on Sunday?"), ("Carl", 33, "me"), ("Bob", 22, "count me in"),
        ("Ann", 11, "10 am at the park?"), ("Bob", 22, "see you there"),
    ]  # fmt: skip
    messages = [Said(day * 86400 + k * 60, name, user, f"{text} ({day})")
                for day in range(6) for k, (name, user, text) in enumerate(lines)]  # fmt: skip
    return write_telegram_chat(path, "Football", "private_supergroup", messages)


@pytest.fixture(scope="module")
def persona_model(smollm2_dir: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("persona")
    export = group_export(root / "result.json")
    dataset = prepare(
        documents_train_file=export, documents_valid_file=export, documents_format="telegram", persona="Bob",
        tokenizer_cls_name=str(smollm2_dir), max_sample_length=256, min_sample_length=1,
        datasets_root=root / "datasets", dataset_name="bob",
    )  # fmt: skip
    config = TrainConfig(
        dataset_dir=str(dataset), model=str(smollm2_dir), experiments_root=str(root / "experiments"),
        batch_size=2, max_steps=2, learning_rate=1e-4, num_warmup_steps=0, val_check_interval=2,
        limit_val_batches=1, num_workers=0, num_generated_samples=1, generation_max_new_tokens=4, lora_r=4,
        lora_target_modules="q_proj,v_proj",
    )  # fmt: skip
    experiment = train(config)
    # validation samples of a chat-export dataset are prompted with the chat template, as for dialogs
    record = json.loads((experiment / "generated.txt").read_text().splitlines()[0])
    assert record["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n"), record["prompt"]
    return experiment / "hf"


async def test_a_bot_trained_on_a_group_export_answers_in_the_group(persona_model, make_config):
    config = ServeConfig(model=str(persona_model), backend="torch", num_threads=1)
    mention = f"@{BOT_USER['username']}"
    with ServerThread(create_app(config)) as server:
        async with FakeTelegram() as tg:
            async with running_bot(make_config(telegram_api_server=tg.url, api_url=server.url)):
                tg.send_group_text(ANN, GROUP, "/settings temperature 0", "Ann")
                tg.send_group_text(ANN, GROUP, "/settings max_tokens 8", "Ann")
                await tg.wait_for(lambda: len(tg.sent("sendMessage", GROUP)) == 2)
                tg.send_group_text(ANN, GROUP, "football on Sunday?", "Ann")
                tg.send_group_text(CARL, GROUP, f"{mention} are you in?", "Carl")
                await tg.wait_for(lambda: len(tg.sent("sendMessage", GROUP)) == 3, timeout=120)
                sent = tg.sent("sendMessage", GROUP)[2]
                answer = tg.messages[(GROUP, sent["_message_id"])]
                await tg.wait_for(lambda: not answer["text"].endswith(PLACEHOLDER), timeout=120)
        history = [{"role": "user", "content": "Ann: football on Sunday?\nCarl: are you in?"}]
        direct = httpx.post(
            server.url + "/v1/chat/completions",
            json={"messages": history, "max_tokens": 8, "temperature": 0, "top_p": 1.0},
            timeout=120,
        )
    direct.raise_for_status()
    expected = direct.json()["choices"][0]["message"]["content"]
    assert expected.strip()
    assert answer["text"] == expected.strip() or answer["text"] == expected
