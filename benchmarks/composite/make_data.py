"""Real pictures for the composite benchmark: emoji cut-outs on wallpaper photos.

Objects: glyphs of the Noto Color Emoji font (Debian ``fonts-noto-color-emoji``), drawn
with their colour bitmaps at the font's bitmap size 109 into RGBA (alpha = mask), several
glyphs per class (so that train and test use different glyphs). Two glyph sets:

- ``--glyphs tones`` (10 classes: a hand, a face or a figure in its six skin tones): a
  class's glyphs share one shape, so held-out glyphs are new pictures of a shape the model
  has seen, and a model trained without the shortcut learns the task at CPU scale.
- ``--glyphs categories`` (the default; 10 classes such as bird, fish, fruit of 5-12
  different glyphs each): held-out glyphs are new kinds of the class, which a model from
  scratch on a few hundred 64 px images does not generalise to (it stays near chance).

Backgrounds: photographs (not the abstract art) of Debian's ``plasma-workspace-wallpapers``
and ``mate-backgrounds``, grouped into pools of similar scenes, one pool per class. Then
``attnguide data composite`` builds the data set.

    python benchmarks/composite/make_data.py --out runs/composite/data          # 64 px, bias 0.95
    python benchmarks/composite/make_data.py --out D --install                 # apt-get install first

Without ``--install`` missing packages stop the script with the command that installs them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
BITMAP_SIZE = 109  # the only size of the font's colour bitmaps (CBDT)
PACKAGES = ("fonts-noto-color-emoji", "plasma-workspace-wallpapers", "mate-backgrounds")

# class -> glyphs (single code points: no joiner sequences)
CATEGORIES = {
    "bird": "🐦🐤🐥🦅🦆🦉🐧🦜🦢🦩🐓🦃",
    "fish": "🐟🐠🐡🦈🐬🐳🐋",
    "dog": "🐕🐶🐩🦮🐺",
    "cat": "🐈🐱😺😸🦁🐯🐅🐆",
    "fruit": "🍎🍏🍐🍊🍋🍌🍉🍇🍓🍒🍑🥝",
    "car": "🚗🚕🚙🚓🚑🚒🚐🏎",
    "flower": "🌸🌺🌻🌼🌷🌹🥀💐",
    "tree": "🌲🌳🌴🎄🌵🎋",
    "insect": "🐝🐞🦋🐛🐜🦗",
    "ball": "⚽🏀🏈⚾🎾🏐🏉🎱",
}
# class -> one emoji that takes the Fitzpatrick modifiers; its glyphs are the emoji alone
# (yellow) and followed by each of the five modifiers (drawn with the Raqm layout engine)
TONE_BASES = {"thumbs_up": "👍", "wave": "👋", "victory": "✌", "biceps": "💪", "ear": "👂",
              "nose": "👃", "baby": "👶", "santa": "🎅", "runner": "🏃", "cyclist": "🚴"}
SKIN_TONES = ("", "\U0001F3FB", "\U0001F3FC", "\U0001F3FD", "\U0001F3FE", "\U0001F3FF")
GLYPH_SETS = {
    "categories": {name: list(glyphs) for name, glyphs in CATEGORIES.items()},
    "tones": {name: [base + tone for tone in SKIN_TONES] for name, base in TONE_BASES.items()},
}

PLASMA = "/usr/share/wallpapers/{}/contents/images/800x600.jpg"
MATE = "/usr/share/backgrounds/mate/nature/{}.jpg"
# pool -> photographs of similar scenes (sorted pool names pair with sorted class names)
POOLS = {
    "p0_lake": [PLASMA.format("BytheWater"), PLASMA.format("summer_1am")],
    "p1_mist": [PLASMA.format("ColdRipple"), PLASMA.format("DarkestHour"), MATE.format("Aqua")],
    "p2_forest": [PLASMA.format("Path"), PLASMA.format("OneStandsOut")],
    "p3_grass": [MATE.format("GreenMeadow"), MATE.format("Blinds")],
    "p4_leaves": [MATE.format("RainDrops"), MATE.format("LadyBird")],
    "p5_red_flowers": [MATE.format("FreshFlower"), MATE.format("Garden")],
    "p6_yellow": [MATE.format("YellowFlower"), MATE.format("TwoWings")],
    "p7_autumn": [PLASMA.format("FallenLeaf"), PLASMA.format("EveningGlow")],
    "p8_sky": [PLASMA.format("Kite"), MATE.format("Storm")],
    "p9_sand_wood": [MATE.format("Dune"), MATE.format("Wood"), PLASMA.format("Grey")],
}


def locate(install: bool) -> None:
    """Check that the font and photos exist; with ``install`` apt-get installs what lacks."""
    missing = [FONT] if not FONT.is_file() else []
    missing += [Path(p) for files in POOLS.values() for p in files if not Path(p).is_file()]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    if not install:
        raise SystemExit(f"missing {len(missing)} input files (first: {missing[0]}); install them with "
                         f"`{' '.join(command)}` (as root) or pass --install")
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(command, check=True)
    still = [p for p in missing if not p.is_file()]
    if still:
        raise SystemExit(f"still missing after installing {PACKAGES}: {still[:3]}")


def render_emoji(out: Path, glyph_set: str = "categories") -> Path:
    """One RGBA PNG per glyph, cropped to its alpha, in OUT/<class>/u<codepoint>[_<modifier>].png."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont, features

    classes = GLYPH_SETS[glyph_set]
    sequences = any(len(glyph) > 1 for glyphs in classes.values() for glyph in glyphs)
    if sequences and not features.check("raqm"):
        raise SystemExit(f"--glyphs {glyph_set} needs Pillow with the Raqm layout engine (libraqm) to draw "
                         "skin-tone sequences as one glyph; install libraqm0 or use --glyphs categories")
    layout = ImageFont.Layout.RAQM if sequences else ImageFont.Layout.BASIC
    font = ImageFont.truetype(str(FONT), BITMAP_SIZE, layout_engine=layout)
    for name, glyphs in classes.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for glyph in glyphs:
            canvas = Image.new("RGBA", (2 * BITMAP_SIZE, 2 * BITMAP_SIZE), (0, 0, 0, 0))
            ImageDraw.Draw(canvas).text((BITMAP_SIZE // 4, BITMAP_SIZE // 4), glyph, font=font,
                                        embedded_color=True)
            alpha = np.asarray(canvas)[:, :, 3]
            if not (alpha >= 128).any():
                raise SystemExit(f"glyph {glyph!r} ({name}) rendered empty: is {FONT} the colour font?")
            box = canvas.getbbox()
            if box[2] - box[0] > 1.5 * BITMAP_SIZE:
                raise SystemExit(f"glyph {glyph!r} ({name}) drew as more than one glyph: the layout engine "
                                 "did not join the sequence")
            canvas.crop((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1)).save(
                folder / ("u" + "_".join(f"{ord(c):05x}" for c in glyph) + ".png"))
    return out


def link_backgrounds(out: Path) -> Path:
    """OUT/<pool>/<file> symbolic links to the photos."""
    for pool, files in POOLS.items():
        folder = out / pool
        folder.mkdir(parents=True, exist_ok=True)
        for path in files:
            name = Path(path).parts[-4] + ".jpg" if "wallpapers" in path else Path(path).name
            link = folder / name
            if not link.exists():
                link.symlink_to(path)
    return out


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/composite/data"))
    p.add_argument("--inputs", type=Path, default=None, help="where the cut-outs and pools go (default OUT.inputs)")
    p.add_argument("--install", action="store_true", help="apt-get install the packages that lack")
    p.add_argument("--glyphs", choices=sorted(GLYPH_SETS), default="categories",
                   help="the object classes: 'tones' (one shape per class in six skin tones; learnable at CPU "
                        "scale) or 'categories' (different glyphs per class; the default)")
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--bias", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    locate(args.install)
    inputs = args.inputs or args.out.with_name(args.out.name + ".inputs")
    if args.overwrite:
        shutil.rmtree(inputs, ignore_errors=True)
    elif (inputs / "objects").is_dir() and (
            sorted(p.name for p in (inputs / "objects").iterdir()) != sorted(GLYPH_SETS[args.glyphs])):
        raise SystemExit(f"{inputs / 'objects'} holds another glyph set than --glyphs {args.glyphs}; "
                         "pass --overwrite or another --inputs")
    objects = render_emoji(inputs / "objects", args.glyphs)
    backgrounds = link_backgrounds(inputs / "backgrounds")
    cmd = [sys.executable, "-m", "attnguide", "data", "composite", str(args.out), "--objects", str(objects),
           "--backgrounds", str(backgrounds), "--n-train", str(args.n_train), "--n-val", str(args.n_val),
           "--n-test", str(args.n_test), "--image-size", str(args.image_size), "--bias", str(args.bias),
           "--seed", str(args.seed)] + ["--overwrite"] * args.overwrite
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    # what made the folder, for run.py's tables (composite.json has the builder's own parameters)
    made = {"glyphs": args.glyphs, **{k: getattr(args, k) for k in ("n_train", "n_val", "n_test", "image_size",
                                                                      "bias", "seed")}}
    (args.out / "make_data.json").write_text(json.dumps(made, indent=1) + "\n")
    return args.out


if __name__ == "__main__":
    main()
