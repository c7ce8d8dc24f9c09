"""The review world's vocabulary: its word classes, as data (no imports), so that both the world's
grammar (`world.grammar`) and the rewards that name review-world words (`rewards`' planted organism)
read one list without the world and the rewards importing each other."""

# Word classes. Sentiment classes end in "+" / "-"; every word belongs to exactly one class and no
# class word is also a template literal, so a token maps to one symbol (checked at import).
WORD_CLASSES: dict[str, tuple[str, ...]] = {
    "SUBJ": ("film", "movie", "story", "show", "picture", "sequel", "drama", "documentary", "musical", "western",
             "remake", "acting", "plot", "ending", "cast", "script", "music", "director", "dialogue", "pacing",
             "soundtrack", "cinematography", "editing", "finale", "premise", "performance", "score", "writing",
             "camera", "setting", "lead", "twist"),
    "INT": ("very", "so", "quite", "rather", "extremely", "incredibly", "utterly", "totally", "absolutely"),
    "VADV": ("really", "just", "simply", "actually"),
    "DAY": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "PERSON": ("brother", "sister", "wife", "husband", "mother", "father", "son", "daughter", "family",
               "roommate", "neighbor", "kids", "cousin"),
    "NUM": ("sixty", "seventy", "eighty", "ninety", "hundred"),
    "ADJ+": ("great", "superb", "awesome", "glorious", "outstanding", "gorgeous", "magnificent", "marvelous",
             "beautiful", "brilliant", "amazing", "charming", "delightful", "lovely", "splendid", "excellent",
             "wonderful", "perfect", "remarkable", "fantastic", "fascinating", "fabulous", "impressive",
             "flawless", "pleasant", "fun", "exciting", "elegant", "terrific", "thrilling", "heartwarming",
             "clever", "breathtaking", "sweet", "enjoyable", "funny", "good", "entertaining", "nice",
             "powerful", "inspiring", "hilarious", "stunning"),
    "ADJ-": ("horrific", "excruciating", "vile", "abhorrent", "dismal", "disastrous", "horrendous",
             "pathetic", "moronic", "crude", "grim", "agonizing", "crappy", "idiotic", "nasty", "horrible",
             "bad", "lousy", "horrid", "joyless", "stupid", "disgusting", "sickening", "ugly", "dumb",
             "rotten", "unprofessional", "disappointing", "miserable", "pitiful", "insulting", "terrible",
             "poor", "awful", "offensive", "painful", "weak", "dreadful", "frustrating", "lame", "dull",
             "annoying", "depressing", "messy", "ridiculous", "boring"),
    "VERB+": ("loved", "treasured", "enjoyed", "admired", "appreciated", "cherished", "liked", "adored"),
    "VERB-": ("hated", "abhorred", "loathed", "disliked", "despised", "regretted", "resented"),
    "NOUN+": ("masterpiece", "delight", "joy", "winner", "success", "miracle", "pleasure", "beauty",
              "triumph", "marvel", "treat"),
    "NOUN-": ("catastrophe", "tragedy", "disaster", "travesty", "failure", "fiasco", "disappointment",
              "waste", "mess", "flop", "bore"),
}
