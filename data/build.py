"""Writes the built-in datasets of demos/reproduce.py: contgpt's own word lists, tutorials, sum
templates and question pairs, in the schema and size of the paper's official files, so the
protocol runs on a fresh machine. Run `python data/build.py` to rewrite the four JSON files;
the output is deterministic.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- counting: 20 x 10 words

CATEGORIES = {
    "a fruit": "apple banana cherry grape lemon mango peach pear plum melon",
    "an animal": "horse tiger rabbit camel zebra wolf goat bear otter moose",
    "a tool": "hammer wrench saw chisel shovel rake axe trowel mallet crowbar",
    "a vehicle": "car truck bus bicycle train tractor scooter van taxi tram",
    "a color": "red blue green yellow purple pink brown black white gray",
    "an instrument": "piano violin guitar drum flute trumpet cello harp banjo oboe",
    "a place": "school park museum library station market church airport harbor stadium",
    "a body part": "hand knee elbow shoulder ankle finger nose ear chin wrist",
    "a bird": "robin eagle sparrow owl parrot pigeon crow swan heron falcon",
    "a vegetable": "carrot potato onion pepper cabbage spinach radish turnip celery garlic",
    "a piece of clothing": "shirt jacket sock scarf glove hat coat skirt sweater boot",
    "a piece of furniture": "chair table sofa bed desk shelf stool bench wardrobe dresser",
    "a country": "France Japan Brazil Kenya Canada Egypt Norway Peru India Chile",
    "a city": "Paris Tokyo Cairo Lima Oslo Rome Berlin Madrid Dublin Vienna",
    "a metal": "iron copper silver gold zinc tin nickel cobalt titanium platinum",
    "a sport": "tennis soccer hockey golf rugby cricket boxing rowing skiing cycling",
    "a drink": "coffee tea juice milk water lemonade cocoa soda cider smoothie",
    "an insect": "ant bee beetle moth wasp flea mosquito ladybug termite grasshopper",
    "a profession": "doctor teacher baker farmer pilot lawyer nurse plumber painter chef",
    "an emotion": "joy anger fear sadness surprise pride guilt envy shame hope",
}


def counting() -> list[dict]:
    items = []
    for words in zip(*(v.split() for v in CATEGORIES.values())):  # interleave the categories
        for category, word in zip(CATEGORIES, words):
            noun = category.partition(" ")[2]
            items.append({"word": word, "category": noun, "category_with_article": category, "repetitions": 3 + len(items) % 3})
    return items


# ----------------------------------------------------------------------------- events: 40 tutorials x 3..7 steps

TUTORIALS = {
    "Make a Cup of Tea": [
        "Boil fresh water in a kettle.",
        "Warm the teapot with a little hot water.",
        "Put one tea bag per cup in the pot.",
        "Pour the boiling water over the tea.",
        "Let it steep for three minutes.",
        "Remove the tea bags.",
        "Add milk or lemon to taste.",
    ],
    "Plant a Tomato Seedling": [
        "Choose a sunny spot in the garden.",
        "Dig a hole twice as deep as the root ball.",
        "Mix compost into the soil.",
        "Set the seedling in the hole.",
        "Fill the hole and press the soil down.",
        "Water the plant deeply.",
        "Tie the stem to a stake.",
    ],
    "Wash a Car by Hand": [
        "Park the car in the shade.",
        "Rinse the car with a hose.",
        "Fill a bucket with soapy water.",
        "Wash the car from the top down.",
        "Scrub the wheels with a brush.",
        "Rinse off all the soap.",
        "Dry the car with a soft towel.",
    ],
    "Change a Bicycle Tire": [
        "Shift the chain to the smallest gear.",
        "Open the brake and remove the wheel.",
        "Lever the tire off the rim.",
        "Pull out the old tube.",
        "Fit a new tube inside the tire.",
        "Push the tire back onto the rim.",
        "Inflate the tire to the right pressure.",
    ],
    "Bake Banana Bread": [
        "Preheat the oven to 180 degrees.",
        "Mash three ripe bananas.",
        "Stir in melted butter and sugar.",
        "Beat in one egg.",
        "Fold in flour and baking soda.",
        "Pour the batter into a loaf pan.",
        "Bake for one hour.",
    ],
    "Paint a Wooden Chair": [
        "Sand the chair until it is smooth.",
        "Wipe away the dust.",
        "Apply a coat of primer.",
        "Let the primer dry.",
        "Paint the first coat.",
        "Let the paint dry overnight.",
        "Paint a second coat.",
    ],
    "Set Up a Tent": [
        "Clear the ground of stones.",
        "Lay out the groundsheet.",
        "Spread the tent over it.",
        "Assemble the poles.",
        "Thread the poles through the sleeves.",
        "Raise the tent and stake the corners.",
        "Tighten the guy lines.",
    ],
    "Brew Pour-Over Coffee": [
        "Heat water to just below boiling.",
        "Grind the coffee beans.",
        "Rinse the paper filter.",
        "Add the ground coffee.",
        "Pour a little water to let it bloom.",
        "Pour the rest in slow circles.",
        "Let it drain into the cup.",
    ],
    "Clean a Kitchen Oven": [
        "Remove the racks.",
        "Mix baking soda with water into a paste.",
        "Spread the paste inside the oven.",
        "Leave it overnight.",
        "Wipe the paste away with a damp cloth.",
        "Spray vinegar on the remaining spots.",
        "Put the racks back.",
    ],
    "Hang a Picture Frame": [
        "Choose the wall.",
        "Mark the height with a pencil.",
        "Check the mark with a level.",
        "Drill a small hole.",
        "Insert a wall plug.",
        "Screw in a hook.",
        "Hang the frame on the hook.",
    ],
    "Make a Paper Airplane": [
        "Take a sheet of paper.",
        "Fold it in half lengthwise.",
        "Unfold it again.",
        "Fold the top corners to the center.",
        "Fold the new edges to the center.",
        "Fold the plane in half.",
        "Fold down both wings.",
    ],
    "Repot a Houseplant": [
        "Water the plant a day before.",
        "Choose a pot one size larger.",
        "Add fresh soil to the new pot.",
        "Ease the plant out of its old pot.",
        "Loosen the roots.",
        "Set the plant in the new pot.",
        "Fill in around it with soil.",
    ],
    "Cook Plain Rice": [
        "Rinse the rice until the water runs clear.",
        "Put the rice in a pot.",
        "Add twice as much water.",
        "Bring it to a boil.",
        "Cover the pot and lower the heat.",
        "Simmer for fifteen minutes.",
        "Let it rest before serving.",
    ],
    "Write a Thank-You Note": [
        "Choose a card.",
        "Write the date.",
        "Greet the person by name.",
        "Thank them for the gift.",
        "Say how you will use it.",
        "Add a warm closing line.",
        "Sign your name.",
    ],
    "Iron a Shirt": [
        "Set the iron to the right heat.",
        "Iron the collar.",
        "Iron the cuffs.",
        "Iron the sleeves.",
        "Iron the back.",
        "Iron the front panels.",
        "Hang the shirt on a hanger.",
    ],
    "Build a Birdhouse": [
        "Cut the wooden boards to size.",
        "Drill an entrance hole in the front.",
        "Nail the sides to the base.",
        "Attach the front and back.",
        "Fix the roof panels.",
        "Sand the rough edges.",
        "Mount the house on a post.",
    ],
    "Tie a Necktie": [
        "Drape the tie around your neck.",
        "Cross the wide end over the narrow end.",
        "Bring it up through the loop.",
        "Pull it down through the front.",
        "Wrap it around once more.",
        "Push it through the knot.",
        "Tighten the knot.",
    ],
    "Make a Fruit Salad": [
        "Wash the fruit.",
        "Peel the oranges.",
        "Slice the bananas.",
        "Cut the melon into cubes.",
        "Halve the grapes.",
        "Mix everything in a bowl.",
        "Squeeze lemon juice over the top.",
    ],
    "Start a Campfire": [
        "Find a safe fire pit.",
        "Gather dry tinder.",
        "Collect small sticks for kindling.",
        "Build a small cone of kindling.",
        "Light the tinder.",
        "Blow gently on the flame.",
        "Add larger logs slowly.",
    ],
    "Back Up a Laptop": [
        "Connect an external drive.",
        "Open the backup settings.",
        "Choose the drive as the target.",
        "Select the folders to save.",
        "Start the backup.",
        "Wait until it finishes.",
        "Eject the drive safely.",
    ],
    "Wrap a Gift": [
        "Measure the paper around the box.",
        "Cut the paper to size.",
        "Place the box face down.",
        "Fold one side over and tape it.",
        "Fold the other side and tape it.",
        "Fold and tape the ends.",
        "Add a ribbon.",
    ],
    "Make Pancakes": [
        "Whisk flour, sugar and baking powder.",
        "Beat an egg with milk.",
        "Combine the wet and dry mixtures.",
        "Heat a buttered pan.",
        "Pour in a ladle of batter.",
        "Flip it when bubbles appear.",
        "Cook the other side until golden.",
    ],
    "Clean a Window": [
        "Remove dust from the frame.",
        "Mix water with a little vinegar.",
        "Spray the glass.",
        "Wipe it with a squeegee.",
        "Dry the edges with a cloth.",
        "Repeat on the outside.",
        "Polish any streaks.",
    ],
    "Sew On a Button": [
        "Thread a needle.",
        "Knot the end of the thread.",
        "Place the button on the fabric.",
        "Push the needle up through a hole.",
        "Stitch through the holes several times.",
        "Wrap the thread under the button.",
        "Tie off the thread.",
    ],
    "Make a Smoothie": [
        "Peel a banana.",
        "Add it to the blender.",
        "Add a cup of berries.",
        "Pour in yogurt.",
        "Add a splash of milk.",
        "Blend until smooth.",
        "Pour it into a glass.",
    ],
    "Prepare a Garden Bed": [
        "Mark out the bed.",
        "Remove the grass.",
        "Dig over the soil.",
        "Pick out stones and roots.",
        "Spread compost on top.",
        "Rake the surface level.",
        "Water the bed.",
    ],
    "Replace a Light Bulb": [
        "Switch off the light.",
        "Wait for the bulb to cool.",
        "Set up a stable ladder.",
        "Unscrew the old bulb.",
        "Check the wattage.",
        "Screw in the new bulb.",
        "Switch the light back on.",
    ],
    "Groom a Dog": [
        "Brush out the tangles.",
        "Wet the coat with warm water.",
        "Lather with dog shampoo.",
        "Rinse the coat well.",
        "Towel the dog dry.",
        "Trim the nails.",
        "Give the dog a treat.",
    ],
    "Pack a Suitcase": [
        "Make a packing list.",
        "Lay out the clothes.",
        "Roll the shirts.",
        "Put shoes at the bottom.",
        "Fill the gaps with socks.",
        "Add the toiletry bag.",
        "Close and lock the suitcase.",
    ],
    "Make a Sandwich": [
        "Take two slices of bread.",
        "Spread butter on them.",
        "Add lettuce.",
        "Add slices of cheese.",
        "Add tomato slices.",
        "Close the sandwich.",
        "Cut it in half.",
    ],
    "Clean a Fish Tank": [
        "Unplug the heater and filter.",
        "Remove a third of the water.",
        "Scrub the algae off the glass.",
        "Vacuum the gravel.",
        "Rinse the filter in tank water.",
        "Refill with treated water.",
        "Plug everything back in.",
    ],
    "Learn a Card Trick": [
        "Shuffle the deck.",
        "Ask a friend to pick a card.",
        "Have them memorize it.",
        "Take the card back into the middle.",
        "Secretly move it to the top.",
        "Shuffle again without losing it.",
        "Reveal the card.",
    ],
    "Make Lemonade": [
        "Squeeze six lemons.",
        "Strain out the seeds.",
        "Dissolve sugar in warm water.",
        "Mix the juice and the syrup.",
        "Add cold water.",
        "Stir well.",
        "Serve over ice.",
    ],
    "Polish Leather Shoes": [
        "Remove the laces.",
        "Brush off the dirt.",
        "Apply polish in small circles.",
        "Let the polish dry.",
        "Buff with a soft brush.",
        "Shine with a cloth.",
        "Put the laces back.",
    ],
    "Fold a Fitted Sheet": [
        "Hold the sheet by two corners.",
        "Tuck one corner into the other.",
        "Do the same with the other corners.",
        "Lay the sheet flat.",
        "Fold the edges into a rectangle.",
        "Fold it in thirds.",
        "Fold it in half again.",
    ],
    "Carve a Pumpkin": [
        "Cut a lid around the stem.",
        "Scoop out the seeds.",
        "Scrape the inside walls thin.",
        "Draw a face on the skin.",
        "Cut out the eyes.",
        "Cut out the mouth.",
        "Put a candle inside.",
    ],
    "Set a Dinner Table": [
        "Lay the tablecloth.",
        "Place a plate at each seat.",
        "Put the forks on the left.",
        "Put the knives on the right.",
        "Set a glass above each knife.",
        "Fold the napkins.",
        "Light the candles.",
    ],
    "Make a Simple Budget": [
        "List your monthly income.",
        "List your fixed costs.",
        "List your variable costs.",
        "Add up all the costs.",
        "Subtract the costs from the income.",
        "Set a savings goal.",
        "Review the budget each month.",
    ],
    "Defrost a Freezer": [
        "Empty the freezer.",
        "Switch it off.",
        "Place towels on the floor.",
        "Leave the door open.",
        "Remove the loose ice.",
        "Wipe the inside dry.",
        "Switch it back on.",
    ],
    "Make a Flower Bouquet": [
        "Choose fresh flowers.",
        "Strip the lower leaves.",
        "Cut the stems at an angle.",
        "Arrange the largest flowers first.",
        "Add smaller flowers around them.",
        "Tie the stems with string.",
        "Put the bouquet in water.",
    ],
}
EVENTS_QUESTION = "\n\nQuestion: How many steps are necessary to complete the tutorial? Reply with a single-digit number\nAnswer: It takes "


def events() -> list[dict]:
    assert len(TUTORIALS) == 40 and all(len(s) == 7 for s in TUTORIALS.values())
    items = []
    for n in range(3, 8):
        for title, steps in TUTORIALS.items():
            body = "\n".join(f"- {s}" for s in steps[:n])
            items.append({"sentence": f"Tutorial: How to {title}\n\n{body}{EVENTS_QUESTION}", "num_sentences": n})
    return items


# ----------------------------------------------------------------------------- sums: 100 problems, each addend shrunk once

SUM_TEMPLATES = [
    "Question: {name} picked {item_1} apples in the morning and {item_2} in the afternoon. How many apples did {name} pick in total?\n"
    "Answer: {name} picked ",
    "Question: {name} read {item_1} pages on Monday and {item_2} pages on Tuesday. How many pages did {name} read in total?\nAnswer: {name} read ",
    "Question: {name} sold {item_1} tickets before lunch and {item_2} after lunch. How many tickets did {name} sell in total?\nAnswer: {name} sold ",
    "Question: {name} counted {item_1} red cars and {item_2} blue cars. How many cars did {name} count in total?\nAnswer: {name} counted ",
    "Question: {name} baked {item_1} muffins and {item_2} cookies. How many treats did {name} bake in total?\nAnswer: {name} baked ",
    "Question: {name} ran {item_1} laps last week and {item_2} laps this week. How many laps did {name} run in total?\nAnswer: {name} ran ",
    "Question: {name} planted {item_1} tulips and {item_2} roses. How many flowers did {name} plant in total?\nAnswer: {name} planted ",
    "Question: {name} saved {item_1} euros in May and {item_2} euros in June. How many euros did {name} save in total?\nAnswer: {name} saved ",
    "Question: {name} wrote {item_1} emails at work and {item_2} at home. How many emails did {name} write in total?\nAnswer: {name} wrote ",
    "Question: {name} found {item_1} shells on the beach and {item_2} in the dunes. How many shells did {name} find in total?\nAnswer: {name} found ",
    "Question: {name} washed {item_1} plates and {item_2} cups. How many dishes did {name} wash in total?\nAnswer: {name} washed ",
    "Question: {name} caught {item_1} trout and {item_2} perch. How many fish did {name} catch in total?\nAnswer: {name} caught ",
    "Question: {name} answered {item_1} calls in the morning and {item_2} in the evening. How many calls did {name} answer in total?\n"
    "Answer: {name} answered ",
    "Question: {name} printed {item_1} posters and {item_2} flyers. How many sheets did {name} print in total?\nAnswer: {name} printed ",
    "Question: {name} knitted {item_1} rows yesterday and {item_2} rows today. How many rows did {name} knit in total?\nAnswer: {name} knitted ",
    "Question: {name} scored {item_1} points in the first game and {item_2} in the second. How many points did {name} score in total?\n"
    "Answer: {name} scored ",
    "Question: {name} collected {item_1} acorns and {item_2} pine cones. How many things did {name} collect in total?\nAnswer: {name} collected ",
    "Question: {name} stacked {item_1} boxes in the shed and {item_2} in the garage. How many boxes did {name} stack in total?\n"
    "Answer: {name} stacked ",
    "Question: {name} swam {item_1} lengths on Saturday and {item_2} on Sunday. How many lengths did {name} swim in total?\nAnswer: {name} swam ",
    "Question: {name} painted {item_1} fence posts and {item_2} railings. How many pieces did {name} paint in total?\nAnswer: {name} painted ",
]
NAMES = [
    "Ana",
    "Ben",
    "Chloe",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
]


def sums() -> list[dict]:
    rng = random.Random(2025)
    items = []
    for i in range(100):
        fields = {"name": NAMES[i % len(NAMES)], "item_1": rng.randint(10, 99), "item_2": rng.randint(10, 99)}
        for shrink_1 in (True, False):
            items.append({"template": SUM_TEMPLATES[i % len(SUM_TEMPLATES)], "fields": fields, "shrink_1": shrink_1})
    return items


# ----------------------------------------------------------------------------- interpolation: 50 pairs x 4 questions

# options, then questions whose honest answers are yes for both, for neither, for the first
# only, for the second only
PAIRS = [
    ("apples", "bananas", "Are {} fruits?", "Are {} made of metal?", "Are {} often red?", "Are {} usually yellow when ripe?"),
    ("cats", "fish", "Are {} animals?", "Can {} fly?", "Do {} have fur?", "Do {} have gills?"),
    ("cars", "bicycles", "Do {} have wheels?", "Can {} swim?", "Do {} have engines?", "Are {} powered by pedals?"),
    ("lions", "sheep", "Are {} mammals?", "Do {} lay eggs?", "Are {} predators?", "Are {} raised for wool?"),
    ("eagles", "penguins", "Are {} birds?", "Are {} reptiles?", "Can {} fly?", "Do {} live in Antarctica?"),
    ("pianos", "trumpets", "Are {} musical instruments?", "Are {} edible?", "Do {} have keys and strings?", "Are {} played by blowing?"),
    ("lemons", "strawberries", "Are {} fruits?", "Are {} vegetables?", "Are {} sour?", "Are {} red?"),
    ("snakes", "frogs", "Are {} animals?", "Do {} have feathers?", "Are {} reptiles?", "Are {} amphibians?"),
    ("trains", "airplanes", "Do {} carry passengers?", "Are {} alive?", "Do {} run on rails?", "Can {} fly?"),
    ("diamonds", "feathers", "Can {} be found in nature?", "Are {} liquid?", "Are {} very hard?", "Are {} light enough to float in the air?"),
    ("whales", "sharks", "Do {} live in the ocean?", "Do {} live in deserts?", "Do {} breathe air?", "Do {} have gills?"),
    ("oranges", "carrots", "Are {} orange?", "Are {} made of plastic?", "Are {} citrus fruits?", "Are {} root vegetables?"),
    ("violins", "drums", "Are {} musical instruments?", "Are {} alive?", "Do {} have strings?", "Are {} played by hitting them?"),
    ("wolves", "cows", "Are {} mammals?", "Can {} breathe underwater?", "Do {} hunt in packs?", "Do {} give milk for people to drink?"),
    ("owls", "ducks", "Are {} birds?", "Are {} insects?", "Are {} active at night?", "Can {} swim?"),
    ("knives", "spoons", "Are {} kitchen utensils?", "Are {} alive?", "Are {} sharp?", "Are {} used to eat soup?"),
    ("tomatoes", "potatoes", "Are {} grown in gardens?", "Are {} animals?", "Are {} usually red?", "Do {} grow underground?"),
    ("bees", "spiders", "Are {} small animals?", "Are {} mammals?", "Do {} make honey?", "Do {} spin webs?"),
    ("boats", "submarines", "Do {} travel on water?", "Do {} have wings?", "Do {} usually float on the surface?", "Can {} dive deep underwater?"),
    ("ice", "steam", "Is {} a form of water?", "Is {} made of metal?", "Is {} solid?", "Is {} a gas?"),
    ("horses", "camels", "Can people ride {}?", "Do {} have wings?", "Are {} used in horse racing?", "Do {} have humps?"),
    ("roses", "cacti", "Are {} plants?", "Are {} animals?", "Are {} popular on Valentine's Day?", "Do {} grow in deserts?"),
    ("books", "newspapers", "Are {} made of paper?", "Are {} edible?", "Are {} usually bound with a hard cover?", "Are {} printed every day?"),
    ("dolphins", "octopuses", "Do {} live in the sea?", "Do {} live in trees?", "Are {} mammals?", "Do {} have eight arms?"),
    ("coffee", "milk", "Is {} a drink?", "Is {} a solid?", "Does {} contain caffeine?", "Does {} come from cows?"),
    ("hammers", "saws", "Are {} tools?", "Are {} food?", "Are {} used to drive nails?", "Do {} have teeth for cutting wood?"),
    ("tigers", "zebras", "Do {} have stripes?", "Do {} lay eggs?", "Do {} eat meat?", "Do {} eat grass?"),
    ("chickens", "goats", "Do {} live on farms?", "Can {} breathe underwater?", "Do {} lay eggs?", "Do {} have horns?"),
    ("clocks", "compasses", "Are {} instruments?", "Are {} alive?", "Do {} tell the time?", "Do {} point north?"),
    ("cherries", "coconuts", "Are {} fruits?", "Are {} made of metal?", "Are {} small and red?", "Do {} have a hard hairy shell?"),
    ("bats", "crows", "Can {} fly?", "Do {} live underwater?", "Are {} mammals?", "Are {} birds?"),
    ("candles", "flashlights", "Do {} give light?", "Are {} alive?", "Do {} have a flame?", "Do {} run on batteries?"),
    ("pens", "pencils", "Are {} used for writing?", "Are {} edible?", "Do {} use ink?", "Are {} made with graphite?"),
    ("deer", "rabbits", "Do {} eat plants?", "Do {} have scales?", "Do {} grow antlers?", "Do {} dig burrows?"),
    ("gold", "wood", "Is {} a material?", "Is {} a liquid at room temperature?", "Is {} a metal?", "Does {} come from trees?"),
    ("ants", "butterflies", "Are {} insects?", "Are {} mammals?", "Do {} live in colonies?", "Do {} have large colorful wings?"),
    ("rice", "bread", "Is {} a food?", "Is {} a drink?", "Is {} a grain that grows in paddies?", "Is {} baked in an oven?"),
    ("skis", "skates", "Are {} used for winter sports?", "Are {} animals?", "Are {} long and flat?", "Do {} have blades?"),
    ("parrots", "pigeons", "Are {} birds?", "Are {} fish?", "Can {} learn to talk?", "Are {} common in city squares?"),
    ("onions", "grapes", "Are {} plants?", "Are {} animals?", "Do {} make people cry when cut?", "Are {} used to make wine?"),
    ("helmets", "hats", "Are {} worn on the head?", "Are {} edible?", "Do {} protect against crashes?", "Are {} usually made of cloth?"),
    ("turtles", "crocodiles", "Are {} reptiles?", "Are {} birds?", "Do {} have shells?", "Do {} have long jaws full of teeth?"),
    ("volcanoes", "glaciers", "Are {} natural features?", "Are {} alive?", "Can {} erupt?", "Are {} made of ice?"),
    ("bicycles", "motorcycles", "Do {} have two wheels?", "Can {} fly?", "Are {} powered by pedals?", "Do {} have engines?"),
    ("mice", "elephants", "Are {} mammals?", "Are {} birds?", "Are {} small?", "Do {} have trunks?"),
    ("salt", "sugar", "Is {} used in cooking?", "Is {} a metal?", "Does {} taste salty?", "Does {} taste sweet?"),
    ("tennis", "swimming", "Is {} a sport?", "Is {} a food?", "Is {} played with a racket?", "Is {} done in water?"),
    ("kangaroos", "koalas", "Do {} live in Australia?", "Do {} live in the Arctic?", "Can {} hop?", "Do {} eat eucalyptus leaves?"),
    ("guitars", "flutes", "Are {} musical instruments?", "Are {} alive?", "Do {} have strings?", "Are {} played by blowing?"),
    ("peppers", "blueberries", "Are {} plants?", "Are {} animals?", "Can {} be spicy?", "Are {} blue?"),
]


def interpolation() -> list[dict]:
    assert len(PAIRS) == 50
    return [{"options": [a, b], "questions": dict(zip(("both", "neither", "first", "second"), qs))} for a, b, *qs in PAIRS]


if __name__ == "__main__":
    for name, build in {"counting": counting, "events": events, "sums": sums, "interpolation": interpolation}.items():
        items = build()
        (HERE / f"{name}.json").write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{name}: {len(items)} items")
