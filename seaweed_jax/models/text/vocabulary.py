"""Frozen word vocabularies of `tokenizer.WordTokenizer`, by name.

A token id is a word's index in its vocabulary, and trained text embeddings are rows indexed by
those ids, so a vocabulary is never edited (not reordered, not extended, not derived from
other tables that may change): it is written out here as a literal. To change the words, add a
new vocabulary under a new name (e.g. "seaweed_word_v2", usually v1 plus words appended at the
end) and, if new runs should use it, point `DEFAULT` at it. Runs record the vocabulary name
they trained with (`text_config().tokenizer`), so an existing run keeps its vocabulary after
`DEFAULT` moves. A leaf module: no imports.
"""

VOCABULARIES: dict[str, tuple[str, ...]] = {
    # specials, then the moving_shapes words, then common English words (so prompts outside
    # the toy captions still tokenize mostly to real ids); text is lower-cased before lookup.
    "seaweed_word_v1": (
        # special tokens (ids 0-2: <pad>, <unk>, <eos>)
        "<pad>", "<unk>", "<eos>",
        # moving_shapes labels and caption-template words (ids 3-33)
        "red", "green", "blue", "yellow", "cyan", "magenta", "white", "orange", "black", "gray",
        "navy", "circle", "square", "triangle", "left", "right", "up", "down", "still", "a", "an",
        "the", "moving", "moves", "standing", "stands", "stays", "on", "across", "with",
        "background",
        # common English words (ids 34-357)
        "of", "and", "to", "in", "is", "it", "that", "for", "as", "was", "be", "by", "at", "this",
        "from", "or", "are", "not", "but", "have", "has", "had", "he", "she", "they", "we", "you",
        "i", "his", "her", "their", "its", "our", "your", "them", "him", "me", "us", "my", "who",
        "what", "which", "when", "where", "why", "how", "all", "any", "both", "each", "few",
        "more", "most", "other", "some", "such", "no", "nor", "only", "own", "same", "so", "than",
        "too", "very", "can", "will", "just", "should", "now", "then", "there", "here", "out",
        "over", "under", "again", "further", "once", "into", "through", "during", "before",
        "after", "above", "below", "between", "off", "around", "along", "toward", "towards",
        "away", "back", "forward", "front", "behind", "near", "far", "inside", "outside", "top",
        "bottom", "middle", "center", "centre", "side", "corner", "edge", "one", "two", "three",
        "four", "five", "six", "seven", "eight", "nine", "ten", "many", "much", "little", "big",
        "large", "small", "tiny", "huge", "long", "short", "tall", "wide", "narrow", "thin",
        "thick", "round", "flat", "fast", "slow", "slowly", "quickly", "quick", "steady",
        "steadily", "smooth", "smoothly", "gently", "straight", "move", "moved", "motion", "slide",
        "slides", "sliding", "glide", "glides", "gliding", "drift", "drifts", "drifting", "travel",
        "travels", "traveling", "travelling", "go", "goes", "going", "come", "comes", "coming",
        "rise", "rises", "rising", "fall", "falls", "falling", "float", "floats", "floating",
        "bounce", "bounces", "bouncing", "spin", "spins", "spinning", "rotate", "rotates",
        "rotating", "stay", "stand", "static", "stationary", "motionless", "frozen", "pause",
        "paused", "stop", "stops", "stopped", "remain", "remains", "remaining", "sit", "sits",
        "shape", "shapes", "object", "objects", "thing", "ball", "box", "block", "dot", "spot",
        "disk", "disc", "ring", "star", "heart", "rectangle", "oval", "diamond", "pyramid", "cube",
        "sphere", "line", "lines", "point", "pixel", "pixels", "image", "picture", "photo",
        "video", "clip", "frame", "frames", "scene", "view", "shot", "animation", "animated",
        "cartoon", "simple", "plain", "solid", "bright", "dark", "light", "pale", "deep", "vivid",
        "colorful", "colourful", "color", "colour", "colored", "coloured", "grey", "purple",
        "pink", "brown", "violet", "gold", "golden", "silver", "teal", "lime", "maroon", "olive",
        "beige", "turquoise", "indigo", "sky", "sea", "water", "ground", "floor", "wall", "field",
        "space", "room", "screen", "canvas", "surface", "backdrop", "uniform", "empty", "blank",
        "clean", "high", "low", "quality", "detailed", "realistic", "beautiful", "nice", "good",
        "bad", "new", "old", "first", "last", "next", "while", "onto", "upon", "against", "within",
        "without", "per", "sun", "moon", "car", "person", "man", "woman", "dog", "cat", "bird",
        "tree", "house", "street", "city", "road",
    ),
}

DEFAULT = "seaweed_word_v1"
