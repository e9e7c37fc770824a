"""Synthetic stand-ins for the seaborn example datasets the corpus notebooks load.

``seaborn.load_dataset(name)`` downloads ``name.csv`` from github.com/mwaskom/seaborn-data
unless it is already in ``$SEABORN_DATA``; that repository has no licence, and the corpus
must run without network. So the test runs this file as a hidden first cell in both kernels:
it writes CSVs with the same columns and category levels (deterministic random values, iris
from scikit-learn's bundled copy) into a temporary directory and points SEABORN_DATA at it,
so ``load_dataset`` applies its own post-processing to them unchanged. Written for this
project (Apache-2.0), not copied from seaborn-data.
"""

import os
import tempfile

import numpy as np
import pandas as pd

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


def _tips(rng):
    n = 244
    size = rng.choice([1, 2, 2, 2, 3, 4, 5, 6], n)
    bill = np.round(rng.gamma(4.0, 2.0, n) + 3.0 * size, 2)
    return pd.DataFrame({
        "total_bill": bill,
        "tip": np.round(np.clip(bill * rng.normal(0.15, 0.04, n), 1.0, None), 2),
        "sex": rng.choice(["Male", "Female"], n, p=[0.64, 0.36]),
        "smoker": rng.choice(["Yes", "No"], n, p=[0.38, 0.62]),
        "day": rng.choice(["Thur", "Fri", "Sat", "Sun"], n, p=[0.25, 0.08, 0.36, 0.31]),
        "time": rng.choice(["Lunch", "Dinner"], n, p=[0.28, 0.72]),
        "size": size,
    })


def _penguins(rng):
    rows = []
    for species, island, count, bill, depth, flipper, mass in [
        ("Adelie", "Torgersen", 52, 38.8, 18.3, 190, 3700),
        ("Adelie", "Biscoe", 44, 38.9, 18.4, 189, 3710),
        ("Adelie", "Dream", 56, 38.5, 18.2, 190, 3690),
        ("Chinstrap", "Dream", 68, 48.8, 18.4, 196, 3730),
        ("Gentoo", "Biscoe", 124, 47.5, 15.0, 217, 5080),
    ]:
        sex = rng.choice(["MALE", "FEMALE"], count)
        male = sex == "MALE"
        rows.append(pd.DataFrame({
            "species": species, "island": island,
            "bill_length_mm": np.round(rng.normal(bill, 2.5, count) + 2 * male, 1),
            "bill_depth_mm": np.round(rng.normal(depth, 0.9, count) + 0.8 * male, 1),
            "flipper_length_mm": np.round(rng.normal(flipper, 6, count) + 4 * male),
            "body_mass_g": np.round(rng.normal(mass, 350, count) + 400 * male, -1),
            "sex": sex,
        }))
    df = pd.concat(rows, ignore_index=True)
    df.loc[[3, 271], df.columns[2:]] = np.nan
    df.loc[[8, 9, 10, 47, 178, 218, 256, 268], "sex"] = np.nan
    return df


def _iris(rng):
    from sklearn.datasets import load_iris

    data = load_iris()
    df = pd.DataFrame(data.data, columns=["sepal_length", "sepal_width", "petal_length",
                                          "petal_width"])
    df["species"] = np.asarray(data.target_names)[data.target]
    return df


def _diamonds(rng):
    n = 3000
    carat = np.round(rng.gamma(2.2, 0.36, n) + 0.2, 2)
    cut = rng.choice(["Fair", "Good", "Very Good", "Premium", "Ideal"], n,
                     p=[0.03, 0.09, 0.22, 0.26, 0.40])
    depth = np.round(rng.normal(61.7, 1.4, n), 1)
    x = np.round(6.4 * carat ** (1 / 3) + rng.normal(0, 0.05, n), 2)
    return pd.DataFrame({
        "carat": carat, "cut": cut,
        "color": rng.choice(list("DEFGHIJ"), n),
        "clarity": rng.choice(["IF", "VVS1", "VVS2", "VS1", "VS2", "SI1", "SI2", "I1"], n),
        "depth": depth, "table": np.round(rng.normal(57.5, 2.2, n)),
        "price": np.round(np.exp(8.45 + 1.7 * np.log(carat) + rng.normal(0, 0.25, n))).astype(int),
        "x": x, "y": np.round(x + rng.normal(0, 0.03, n), 2), "z": np.round(x * depth / 100, 2),
    })


def _titanic(rng):
    n = 891
    pclass = rng.choice([1, 2, 3], n, p=[0.24, 0.21, 0.55])
    sex = rng.choice(["male", "female"], n, p=[0.65, 0.35])
    age = np.round(np.clip(rng.normal(29.7, 14.5, n), 0.42, 80), 1)
    age[rng.random(n) < 0.2] = np.nan
    chance = 0.2 + 0.5 * (sex == "female") + 0.15 * (3 - pclass) / 2
    survived = (rng.random(n) < chance).astype(int)
    embarked = rng.choice(["S", "C", "Q"], n, p=[0.72, 0.19, 0.09])
    sibsp = rng.choice([0, 0, 0, 1, 1, 2, 3], n)
    parch = rng.choice([0, 0, 0, 1, 2], n)
    who = np.where(age < 16, "child", np.where(sex == "male", "man", "woman"))
    deck = np.where(pclass == 1, rng.choice(list("ABCDE"), n), None)
    deck = np.where(rng.random(n) < 0.3, deck, None)
    return pd.DataFrame({
        "survived": survived, "pclass": pclass, "sex": sex, "age": age, "sibsp": sibsp,
        "parch": parch, "fare": np.round(rng.gamma(1.5, 60 / pclass ** 1.5, n), 4),
        "embarked": embarked, "class": np.array(["First", "Second", "Third"])[pclass - 1],
        "who": who, "adult_male": who == "man", "deck": deck,
        "embark_town": pd.Series(embarked).map({"S": "Southampton", "C": "Cherbourg",
                                                "Q": "Queenstown"}),
        "alive": np.where(survived == 1, "yes", "no"), "alone": (sibsp + parch) == 0,
    })


def _anagrams(rng):
    n = 20
    return pd.DataFrame({
        "subidr": np.arange(1, n + 1), "attnr": ["divided"] * 10 + ["focused"] * 10,
        "num1": rng.integers(2, 8, n), "num2": rng.integers(2, 8, n), "num3": rng.integers(4, 10, n),
    })


def _flights(rng):
    years = np.repeat(np.arange(1949, 1961), 12)
    season = np.tile(np.sin(np.linspace(-np.pi / 2, 1.5 * np.pi, 12)), 12)
    trend = 110 * 1.12 ** (years - 1949)
    return pd.DataFrame({"year": years, "month": MONTHS * 12,
                         "passengers": np.round(trend * (1 + 0.15 * season)).astype(int)})


def _anscombe(rng):
    x = np.array([10, 8, 13, 9, 11, 14, 6, 4, 12, 7, 5], float)
    frames = []
    for name in ["I", "II", "III", "IV"]:
        xs = x if name != "IV" else np.r_[np.full(10, 8.0), 19.0]
        frames.append(pd.DataFrame({"dataset": name, "x": xs,
                                    "y": np.round(3 + 0.5 * xs + rng.normal(0, 1.2, 11), 2)}))
    return pd.concat(frames, ignore_index=True)


def _dots(rng):
    rows = []
    for align, times in [("dots", range(-80, 721, 20)), ("sacc", range(-500, 301, 20))]:
        for choice in ["T1", "T2"]:
            for coherence in [0.0, 3.2, 6.4, 12.8, 25.6, 51.2]:
                for time in times:
                    sign = 1 if choice == "T1" else -1
                    rate = 35 + sign * coherence * 0.2 * max(time, 0) / 400 + rng.normal(0, 1)
                    rows.append((align, choice, time, coherence, rate))
    return pd.DataFrame(rows, columns=["align", "choice", "time", "coherence", "firing_rate"])


def _fmri(rng):
    rows = []
    for subject in range(14):
        for timepoint in range(19):
            for event, gain in [("stim", 1.0), ("cue", 0.3)]:
                for region, scale in [("parietal", 1.0), ("frontal", 0.6)]:
                    bump = np.exp(-((timepoint - 5) ** 2) / 8) * 0.2 * gain * scale
                    rows.append((f"s{subject}", timepoint, event, region,
                                 bump - 0.04 + rng.normal(0, 0.03)))
    return pd.DataFrame(rows, columns=["subject", "timepoint", "event", "region", "signal"])


def _dowjones(rng):
    dates = pd.date_range("1914-12-01", periods=649, freq="MS")
    price = 55 * np.exp(np.cumsum(rng.normal(0.004, 0.04, len(dates))))
    return pd.DataFrame({"Date": dates.strftime("%Y-%m-%d"), "Price": np.round(price, 2)})


def _healthexp(rng):
    rows = []
    for country, base, life in [("Germany", 250, 70.6), ("France", 190, 72.2),
                                ("Great Britain", 120, 71.9), ("Japan", 150, 72.0),
                                ("Canada", 280, 72.8), ("USA", 330, 70.9)]:
        for year in range(1970, 2021):
            rows.append((year, country, round(base * 1.07 ** (year - 1970), 3),
                         round(life + 0.2 * (year - 1970) + rng.normal(0, 0.2), 1)))
    return pd.DataFrame(rows, columns=["Year", "Country", "Spending_USD", "Life_Expectancy"])


def _attention(rng):
    rows = []
    for subject in range(1, 21):
        attention = "divided" if subject <= 10 else "focused"
        for solutions in (1, 2, 3):
            rows.append((subject, attention, solutions,
                         float(np.clip(round(rng.normal(6 + (attention == "focused"), 1.5)), 2, 9))))
    return pd.DataFrame(rows, columns=["subject", "attention", "solutions", "score"])


def write_all(directory):
    """Write every dataset as ``<name>.csv`` into ``directory``."""
    for name, make in [("tips", _tips), ("penguins", _penguins), ("iris", _iris),
                       ("diamonds", _diamonds), ("titanic", _titanic), ("anagrams", _anagrams),
                       ("flights", _flights), ("anscombe", _anscombe), ("dots", _dots),
                       ("fmri", _fmri), ("dowjones", _dowjones), ("healthexp", _healthexp),
                       ("attention", _attention)]:
        index = name == "attention"  # its CSV has an unnamed index column, as the original
        make(np.random.default_rng(0)).to_csv(os.path.join(directory, name + ".csv"), index=index)


os.environ["SEABORN_DATA"] = tempfile.mkdtemp(prefix="seaborn-data-")
write_all(os.environ["SEABORN_DATA"])
