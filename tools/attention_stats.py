"""Attention saturation statistics of NonLocalBlock on real COVID19-CT.

For `ResNetBackbone(depth, attention="5")` prints, per non-local block, the
mean (over queries and val images) of each query's largest attention weight,
the mean entropy (nats) and the uniform entropy ln(keys): at initialisation
and after a short supervised fine-tune on covid_ct train (measured on val).
`--score=dot` measures the old unscaled layer (same weights, old scores),
the saturation of issue 15. `--stage_weights=stl_m=PATH,finetune=PATH`
measures the backbones a chain's stages wrote (e.g. `runs/x/stl_m/
backbone.weights.h5`) beside the initialisation. Writes JSON and Markdown.

    python tools/attention_stats.py --depth=18 --width=0.5 --image_size=96 \
        --epochs=2 --score=cosine --out=/tmp/attn_cosine
    python tools/attention_stats.py --attention=1 --image_size=96 \
        --stage_weights=stl_m=runs/a1/stl_m/backbone.weights.h5,\
finetune=runs/a1/finetune/backbone.weights.h5 --out=/tmp/attn_chain_a1
"""

import json
import os

# oneDNN kernels, as the CLI runs them (`tf_startup.prefer_onednn`).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from matl_keras.data.pipeline import eval_transform
from matl_keras.models.backbone_weights import load_backbone
from matl_keras.models.resnet.attention_maps import attention_maps
from matl_keras.models.resnet.attention_maps import nonlocal_blocks
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone

flags.DEFINE_string("data_dir", "/work/shared/data/covid-ct", "COVID19-CT.")
flags.DEFINE_integer("depth", 18, "ResNet depth (18 or 50).")
flags.DEFINE_float("width", 0.5, "Width multiplier.")
flags.DEFINE_integer("image_size", 128, "Input side.")
flags.DEFINE_enum("score", "cosine", ["cosine", "dot"], "NonLocalBlock score.")
flags.DEFINE_integer("epochs", 0, "Fine-tune epochs on train (0: init only).")
flags.DEFINE_float("lr", 0.01, "Fine-tune SGD learning rate.")
flags.DEFINE_integer("max_val", 64, "Val images measured.")
flags.DEFINE_string("weights", None, "Optional backbone weights file.")
flags.DEFINE_string("attention", "5", "ATTENTION placement ('1', '5').")
flags.DEFINE_list("stage_weights", [], "label=path of stage backbones.")
flags.DEFINE_string("out", "/tmp/attention_stats", "Output path stem.")
FLAGS = flags.FLAGS


def _split(split):
    rows = []
    for label, cls in enumerate(("NonCOVID", "COVID")):
        listing = os.path.join(
            FLAGS.data_dir, "Data-split", cls, f"{split}CT_{cls}.txt"
        )
        with open(listing) as f:
            names = [n.strip() for n in f if n.strip()]
        folder = os.path.join(FLAGS.data_dir, "Images-processed", f"CT_{cls}")
        rows += [(os.path.join(folder, n), label) for n in names]
    images, labels = [], []
    for path, label in rows:
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=3, expand_animations=False
        )
        image = tf.image.convert_image_dtype(image, tf.float32)
        images.append(eval_transform(image, FLAGS.image_size, 0.875))
        labels.append(label)
    return np.stack([np.asarray(i) for i in images]), np.asarray(labels)


def block_stats(model, images):
    rows = {}
    for start in range(0, len(images), 16):
        maps = attention_maps(model, images[start : start + 16])
        for name, a in maps.items():
            a = a.astype("float64")
            ent = -(a * np.log(np.clip(a, 1e-30, None))).sum(-1)
            rows.setdefault(name, []).append(
                (a.max(-1).mean(), ent.mean(), np.log(a.shape[-1]), len(a))
            )
    out = {}
    for name, parts in rows.items():
        n = sum(p[3] for p in parts)
        out[name] = {
            "mean_max_weight": sum(p[0] * p[3] for p in parts) / n,
            "entropy": sum(p[1] * p[3] for p in parts) / n,
            "uniform_entropy": parts[0][2],
        }
    return out


def main(_):
    keras.utils.set_random_seed(0)
    backbone = ResNetBackbone(
        depth=FLAGS.depth,
        width_multiplier=FLAGS.width,
        image_size=FLAGS.image_size,
        attention=FLAGS.attention,
    )
    for block in nonlocal_blocks(backbone):
        block.score = FLAGS.score
    if FLAGS.weights:
        load_backbone(backbone, FLAGS.weights)
    val_x, _ = _split("val")
    val_x = val_x[: FLAGS.max_val]
    result = {"init": block_stats(backbone, val_x)}
    for item in FLAGS.stage_weights:
        label, path = item.split("=", 1)
        load_backbone(backbone, path)
        result[label] = block_stats(backbone, val_x)
    if FLAGS.epochs:
        train_x, train_y = _split("train")
        features = backbone(backbone.input)
        if isinstance(features, dict):
            features = features[max(features)]
        pooled = keras.layers.GlobalAveragePooling2D()(features)
        logits = keras.layers.Dense(2)(pooled)
        classifier = keras.Model(backbone.input, logits)
        classifier.compile(
            keras.optimizers.SGD(FLAGS.lr, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        classifier.fit(
            train_x, train_y, batch_size=32, epochs=FLAGS.epochs, verbose=2
        )
        result["trained"] = block_stats(backbone, val_x)
    lines = [
        "| stage | block | mean max weight | entropy | ln(keys) |",
        "|---|---|---|---|---|",
    ]
    for stage, blocks in result.items():
        for name, s in blocks.items():
            lines.append(
                f"| {stage} | {name} | {s['mean_max_weight']:.3f} | "
                f"{s['entropy']:.3f} | {s['uniform_entropy']:.3f} |"
            )
    print("\n".join(lines))
    with open(FLAGS.out + ".json", "w") as f:
        json.dump({"flags": FLAGS.flag_values_dict(), **result}, f, indent=1)
    with open(FLAGS.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
