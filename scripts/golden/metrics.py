"""Golden fixtures for Hone's text metrics (crates/hone/src/eval/metrics/).

Run from anywhere with the reference venv (~5 s):
    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/metrics.py

Writes fixtures/metrics/{en,zh}.json: a small corpus of (predict, label) rows with every score the
reference tools give, per row and for the corpus, all on the 0-100 scale:

- bleu: sacrebleu.corpus_bleu (tokenize "13a" for en, "zh" for zh; defaults otherwise: smoothing
  "exp", no effective order);
- rouge1/rouge2/rougeL (en): Google's rouge-score RougeScorer F-measures, without and with its
  Porter stemmer (`_stem` keys), ×100, averaged over rows;
- rouge-1/rouge-2/rouge-l and bleu-4 (both languages): LLaMA-Factory's ComputeSimilarity
  (src/llamafactory/train/sft/metric.py, also scripts/eval_bleu_rouge.py), reproduced below
  line for line: jieba words, rouge_chinese.Rouge().get_scores, NLTK sentence_bleu over
  characters with SmoothingFunction().method3, each ×100 rounded to 4 decimals, then averaged;
- exact_match/f1: the official SQuAD v2.0 evaluation script's normalize_answer, compute_exact and
  compute_f1 (no PyPI package ships them; copied below verbatim), ×100, averaged.

The zh rows also carry jieba's segmentation, so the Rust tests check that jieba-rs cuts the same
words. fixtures/metrics/porter.json holds NLTK's PorterStemmer (the default NLTK_EXTENSIONS mode,
as rouge-score uses it) on a word list covering every rule.
"""

import collections
import json
import re
import string
from pathlib import Path

import jieba
import nltk
import rouge_chinese
import rouge_score
import sacrebleu
from nltk.stem import porter
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge
from rouge_score import rouge_scorer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "metrics"

EN = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("A cat was sitting on the mat.", "The cat sat on the mat."),
    ("", "The answer is forty-two."),
    ("Something", ""),
    ("", ""),
    ("yes", "yes"),
    ("no", "yes"),
    ("Paris", "The capital of France is Paris."),
    ("The capital of France is Paris, of course!", "Paris"),
    ("It costs $3.50, i.e. 3,500 cents -- or so.", "It costs 3.50 dollars, that is 350 cents."),
    ("In 1999-2001 the rate rose 5.5% (approx.).", "Between 1999 and 2001, the rate rose by 5.5 percent."),
    ("Running, jumped, happily; the runners were running.", "The runner runs and jumps happily."),
    ("Generalizations are generally relational and conditional.", "A generalization is a general relation."),
    ("the the the the", "the cat"),
    ("Hello, world!", "hello world"),
    ("Hello &amp; goodbye &lt;tag&gt; &quot;quoted&quot;", 'Hello & goodbye <tag> "quoted"'),
    ("An apple a day keeps the doctor away.", "An apple a day keeps the doctor away"),
    ("To be or not to be, that is the question.", "To be, or not to be: that is the question."),
    ("Machine learning models require large datasets.", "Large datasets are required by machine learning models."),
    ("I don't know.", "I do not know"),
    ("Use pip install torch==2.1 to install it.", "Install it with `pip install torch==2.1`."),
    ("The quick brown fox jumps over the lazy dog", "A quick brown dog jumps over the lazy fox"),
    ("e.g.", "for example"),
    ("42", "42"),
    ("3.14159", "3.14"),
    ("Deep learning 深度学习 is popular.", "深度学习 (deep learning) is popular."),
    ("Café naïve résumé — ÜBER façade", "cafe naive resume uber facade"),
    ("  leading and trailing spaces  ", "leading and trailing spaces"),
    ("First sentence. Second sentence! Third?", "First sentence. Second one! A third?"),
    ("The hospitalization was conditional upon the availability of beds.", "Beds were available, so they hospitalized him."),
    ("Summarize: the meeting was postponed until further notice.", "The meeting has been postponed."),
    ("a", "an"),
]

ZH = [
    ("今天天气很好。", "今天天气很好。"),
    ("今天的天气非常好！", "今天天气很好。"),
    ("", "我爱北京天安门。"),
    ("我爱北京天安门。", ""),
    ("", ""),
    ("好", "好"),
    ("是", "否"),
    ("北京", "中国的首都是北京。"),
    ("中国的首都是北京，这是众所周知的。", "北京"),
    ("机器学习需要大量的数据。", "大量数据是机器学习所必需的。"),
    ("深度学习（Deep Learning）是机器学习的一个分支。", "深度学习是机器学习的分支之一。"),
    ("他说：“你好！”然后离开了。", "他说了一声你好，然后走了。"),
    ("价格是3.5元，约合0.5美元。", "价格为3.5元。"),
    ("2023年GDP增长了5.2%。", "2023年国内生产总值增长5.2%。"),
    ("使用 pip install torch 安装。", "用pip安装torch。"),
    ("小明硕士毕业于中国科学院计算所，后在日本京都大学深造。", "小明毕业于中国科学院计算所。"),
    ("我来到北京清华大学", "他来到了网易杭研大厦"),
    ("结巴分词是一个很好用的中文分词工具。", "jieba是好用的中文分词组件。"),
    ("请问？", "请问。"),
    ("嗯……这个问题很难回答……", "这个问题很难。"),
    ("第一句。第二句！第三句？", "第一句。第二句。第三句。"),
    ("人工智能正在改变世界", "人工智能改变了世界"),
    ("苹果", "香蕉"),
    ("一二三四五六七八九十", "一二三四五"),
    ("Hello 世界", "你好 world"),
    ("ＡＢＣ全角字符１２３", "ABC全角字符123"),
    ("《红楼梦》是中国古典小说。", "红楼梦是一部古典小说"),
    ("他的回答是：不知道。", "不知道"),
    ("这是一个非常非常非常长的句子，用来测试模型在长文本上的表现，看看分数如何变化。", "这是一个长句子，用来测试模型的表现。"),
    ("  前后有空格  ", "前后有空格"),
    ("早上好", "早上好！"),
]

PORTER_WORDS = """
caresses ponies ties caress cats feed agreed disabled matting mating meeting milling messing
meetings happy sky skies dying lying tying news innings inning outings canning howe proceed
exceed succeed relational conditional rational valenci hesitanci digitizer conformabli
radicalli differentli vileli analogousli vietnamization predication operator feudalism
decisiveness hopefulness callousness formaliti sensitiviti sensibiliti triplicate formative
formalize electriciti electrical hopeful goodness revival allowance inference airliner
gyroscopic adjustable defensible irritant replacement adjustment dependent adoption homologou
communism activate angulariti homologous effective bowdlerize probate rate cease controll
roll generalizations generalization running runners runner jumped jumps happily hospitalization
hospitalized availability datasets required learning models postponed postponement
beautifully tried cried flies dies spied plied agreement hopping hoping filing filling
falling fizzed hissed sized tanned bled conflated troubled sized hopped wrote writing
syllogism analogies analogy biology geology fully carefulli fulli hopefulli emotionalli
yearly yelling crying toying boyish quickly entities sensational traditional
""".split()


def rouge_score_rows(rows, use_stemmer):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    out = []
    for predict, label in rows:
        scores = scorer.score(label, predict)
        out.append({key: scores[key].fmeasure * 100 for key in ("rouge1", "rouge2", "rougeL")})
    return out


def llamafactory_row(predict, label):
    """ComputeSimilarity.__call__'s loop body for one (pred, label) pair."""
    hypothesis = list(jieba.cut(predict))
    reference = list(jieba.cut(label))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference).split()) == 0:
        result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        rouge = Rouge()
        scores = rouge.get_scores(" ".join(hypothesis), " ".join(reference))
        result = scores[0]
    row = {k: round(v["f"] * 100, 4) for k, v in result.items()}
    bleu_score = sentence_bleu(
        [list(label)], list(predict), smoothing_function=SmoothingFunction().method3
    )
    row["bleu-4"] = round(bleu_score * 100, 4)
    row["predict_words"] = hypothesis
    row["label_words"] = reference
    return row


# --- Official SQuAD v2.0 evaluation script (verbatim) ---
def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
        return re.sub(regex, " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def get_tokens(s):
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold, a_pred):
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


# --- end of the SQuAD script ---


def mean(values):
    return sum(values) / len(values)


def corpus(rows, lang):
    preds = [p for p, _ in rows]
    labels = [l for _, l in rows]
    tokenize = "zh" if lang == "zh" else "13a"
    bleu = sacrebleu.corpus_bleu(preds, [labels], tokenize=tokenize)
    llama = [llamafactory_row(p, l) for p, l in rows]
    out_rows = []
    for i, (p, l) in enumerate(rows):
        row = {
            "predict": p,
            "label": l,
            "sacrebleu_tokens": {
                "predict": sacrebleu.BLEU(tokenize=tokenize)._preprocess_segment(p),
                "label": sacrebleu.BLEU(tokenize=tokenize)._preprocess_segment(l),
            },
            "llamafactory": llama[i],
            "exact_match": compute_exact(l, p) * 100,
            "f1": compute_f1(l, p) * 100,
        }
        out_rows.append(row)
    result = {
        "lang": lang,
        "rows": out_rows,
        "corpus": {
            "bleu": bleu.score,
            "bleu4_sentence_avg": mean([r["bleu-4"] for r in llama]),
            "llamafactory_rouge1": mean([r["rouge-1"] for r in llama]),
            "llamafactory_rouge2": mean([r["rouge-2"] for r in llama]),
            "llamafactory_rougeL": mean([r["rouge-l"] for r in llama]),
            "exact_match": mean([r["exact_match"] for r in out_rows]),
            "f1": mean([r["f1"] for r in out_rows]),
            "n": len(rows),
        },
    }
    if lang == "en":
        for stem, suffix in ((False, ""), (True, "_stem")):
            scores = rouge_score_rows(rows, stem)
            for row, s in zip(out_rows, scores):
                for key, value in s.items():
                    row[key + suffix] = value
            for key in ("rouge1", "rouge2", "rougeL"):
                result["corpus"][key + suffix] = mean([s[key] for s in scores])
    return result


def main():
    jieba.setLogLevel(60)
    jieba.initialize()
    OUT.mkdir(parents=True, exist_ok=True)
    versions = {
        "sacrebleu": sacrebleu.__version__,
        "rouge_score": getattr(rouge_score, "__version__", "0.1.2"),
        "nltk": nltk.__version__,
        "jieba": jieba.__version__,
        "rouge_chinese": rouge_chinese.__version__,
    }
    for lang, rows in (("en", EN), ("zh", ZH)):
        data = corpus(rows, lang)
        data["versions"] = versions
        (OUT / f"{lang}.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
        c = data["corpus"]
        print(lang, {k: round(v, 4) for k, v in c.items()})
    stemmer = porter.PorterStemmer()
    stems = {w: stemmer.stem(w) for w in sorted(set(PORTER_WORDS))}
    (OUT / "porter.json").write_text(json.dumps(stems, indent=0, sort_keys=True) + "\n")
    print(f"porter: {len(stems)} words")


if __name__ == "__main__":
    main()
