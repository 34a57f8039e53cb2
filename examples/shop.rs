//! A small shop: three services of one app that call each other, with types the compiler checks.
//!
//! ```text
//!                      ┌──────────────► cart      shard by user (4), a basket per user in storage
//! frontend (spread 2) ─┤
//!  exposed, passwords  └──────────────► catalog   scatter over 4 leaves, merged top 5
//! ```
//!
//! `frontend` is what shoppers call: it searches the catalog, puts products in the shopper's
//! cart and shows the cart. It calls the other two services through its [`mp::Context`], so each
//! call carries the shopper (the cart keeps one basket per user) and what is left of the
//! shopper's deadline. `CART` and `CATALOG` are typed names: serving them with a handler of other
//! types, or calling them with the wrong request, does not compile.
//!
//! ```console
//! $ cargo run --example shop
//! $ metaparticle call frontend '{"search":"oak"}' --user alice:wonderland
//! $ metaparticle call frontend '{"add":{"sku":"desk-oak","quantity":1}}' --user alice:wonderland
//! $ metaparticle call frontend '{"cart":{}}' --user alice:wonderland
//! $ cargo run --example shop -- delete --purge
//! ```
//!
//! The two shoppers are demo accounts written below, so that the shop runs the same on every
//! runner (a container or pod gets only the launch contract's environment, not the deployer's).
use std::time::Duration;

use metaparticle as mp;
use serde::{Deserialize, Serialize};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// The catalog: products spread over four leaves; a search asks them all and keeps the best five.

/// A product as shoppers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Product {
    sku: String,
    name: String,
    price_cents: u64,
}

/// What the catalog answers: a search by words, or one product by its SKU.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CatalogRequest {
    Search { query: String },
    Lookup { sku: String },
}

/// One product found, with how well it matched.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Hit {
    product: Product,
    score: u32,
}

const CATALOG: mp::Callee<CatalogRequest, Vec<Hit>> = mp::Callee::new("catalog");
const CATALOG_LEAVES: usize = 4;
/// How many hits a search returns.
const TOP: usize = 5;

/// Every product: SKU, name, price in cents. Leaf `i` holds the products whose index is `i`
/// modulo the number of leaves, as a partitioned index would.
const PRODUCTS: [(&str, &str, u64); 20] = [
    ("lamp-desk", "Desk lamp, brass", 3900),
    ("lamp-floor", "Floor lamp, linen shade", 8900),
    ("lamp-clip", "Clip-on reading lamp", 1900),
    ("mug-stone", "Stoneware mug", 1200),
    ("mug-travel", "Travel mug, steel", 2400),
    ("kettle", "Electric kettle, steel", 4900),
    ("teapot", "Cast iron teapot", 5600),
    ("chair-oak", "Oak chair", 12900),
    ("chair-desk", "Desk chair, mesh", 18900),
    ("desk-oak", "Oak desk", 34900),
    ("shelf-oak", "Oak shelf", 7900),
    ("rug-wool", "Wool rug", 15900),
    ("blanket-wool", "Wool blanket", 6900),
    ("pillow-linen", "Linen pillow", 2900),
    ("vase-glass", "Glass vase", 2200),
    ("clock-wall", "Wall clock, oak", 4500),
    ("notebook", "Linen notebook", 900),
    ("pen-brass", "Brass pen", 3500),
    ("candle", "Beeswax candle", 1100),
    ("plant-pot", "Stoneware plant pot", 1800),
];

/// The products leaf `leaf` holds.
fn partition(leaf: usize) -> impl Iterator<Item = Product> {
    PRODUCTS.iter().enumerate().filter(move |(i, _)| i % CATALOG_LEAVES == leaf).map(
        |(_, (sku, name, price))| Product {
            sku: sku.to_string(),
            name: name.to_string(),
            price_cents: *price,
        },
    )
}

/// How many of the query's words are words of the product's name.
fn score(product: &Product, query: &str) -> u32 {
    let name = product.name.to_lowercase();
    let words: Vec<&str> = name.split(|c: char| !c.is_alphanumeric()).collect();
    query.to_lowercase().split_whitespace().filter(|w| words.contains(w)).count() as u32
}

/// Best first: higher score, then cheaper, then by SKU, so the order never depends on timing.
fn best_first(hits: &mut [Hit]) {
    hits.sort_by(|a, b| {
        (b.score, a.product.price_cents, &a.product.sku).cmp(&(
            a.score,
            b.product.price_cents,
            &b.product.sku,
        ))
    });
}

/// Runs on each catalog leaf: its own best hits.
fn search_leaf(ctx: mp::Context, request: CatalogRequest) -> Vec<Hit> {
    let mut hits: Vec<Hit> = match request {
        CatalogRequest::Search { query } => partition(ctx.replica())
            .map(|product| Hit { score: score(&product, &query), product })
            .filter(|hit| hit.score > 0)
            .collect(),
        CatalogRequest::Lookup { sku } => partition(ctx.replica())
            .filter(|p| p.sku == sku)
            .map(|product| Hit { product, score: 1 })
            .collect(),
    };
    best_first(&mut hits);
    hits.truncate(TOP);
    hits
}

/// Runs on the gather root: the best of every leaf's best.
fn top_hits(parts: Vec<Vec<Hit>>) -> Vec<Hit> {
    let mut hits: Vec<Hit> = parts.into_iter().flatten().collect();
    best_first(&mut hits);
    hits.truncate(TOP);
    hits
}

// ---------------------------------------------------------------------------------------------
// The cart: one basket per shopper, kept in storage, every shopper's requests on one shard.

/// One product in a basket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    sku: String,
    name: String,
    price_cents: u64,
    quantity: u32,
}

/// A shopper's basket: what the cart keeps per user.
#[derive(Default, Serialize, Deserialize)]
struct Basket {
    lines: Vec<Line>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CartRequest {
    Add { product: Product, quantity: u32 },
    View {},
}

/// A basket as the shopper sees it.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CartView {
    lines: Vec<Line>,
    items: u32,
    total_cents: u64,
}

const CART: mp::Callee<CartRequest, CartView> = mp::Callee::new("cart");
const CART_SHARDS: usize = 4;
/// Most of one product a basket may hold.
const MAX_QUANTITY: u32 = 99;

fn view(basket: &Basket) -> CartView {
    CartView {
        lines: basket.lines.clone(),
        items: basket.lines.iter().map(|l| l.quantity).sum(),
        total_cents: basket.lines.iter().map(|l| l.price_cents * u64::from(l.quantity)).sum(),
    }
}

/// Runs on the shopper's shard, on the shopper's basket (loaded, and stored if changed, by
/// metaparticle with compare-and-swap).
fn cart(request: CartRequest, basket: &mut mp::User<Basket>) -> Result<CartView, mp::HandlerError> {
    if let CartRequest::Add { product, quantity } = request {
        let held = basket.lines.iter().find(|l| l.sku == product.sku).map_or(0, |l| l.quantity);
        if quantity == 0 || held + quantity > MAX_QUANTITY {
            return Err(mp::HandlerError::new(format!("a basket holds 1 to {MAX_QUANTITY} of a product"))
                .with_code(mp::RpcError::INVALID_PARAMS)
                .with_data(json!({ "sku": product.sku, "in_basket": held, "asked": quantity })));
        }
        match basket.lines.iter_mut().find(|l| l.sku == product.sku) {
            Some(line) => line.quantity += quantity,
            None => basket.lines.push(Line {
                sku: product.sku,
                name: product.name,
                price_cents: product.price_cents,
                quantity,
            }),
        }
    }
    Ok(view(basket))
}

// ---------------------------------------------------------------------------------------------
// The frontend: what shoppers call.

/// What a shopper asks.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ShopRequest {
    Search(String),
    Add { sku: String, quantity: u32 },
    Cart {},
}

/// A search's answer: the best products, and the shopper's cart in brief (`null` if the cart
/// could not be reached: a search still answers).
#[derive(Debug, Serialize, Deserialize)]
struct Page {
    results: Vec<Product>,
    cart: Option<Summary>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Summary {
    items: u32,
    total_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum ShopReply {
    Page(Page),
    Cart(CartView),
}

/// The code of "no such product".
const NOT_FOUND: i64 = -32044;

async fn frontend(ctx: mp::Context, request: ShopRequest) -> Result<ShopReply, mp::HandlerError> {
    match request {
        ShopRequest::Search(query) => {
            // Both calls at once; the page waits for the slower one.
            let (hits, cart) = tokio::join!(
                ctx.call(CATALOG, CatalogRequest::Search { query }),
                ctx.call(CART, CartRequest::View {})
            );
            let cart = match cart {
                Ok(cart) => Some(Summary { items: cart.items, total_cents: cart.total_cents }),
                Err(e) => {
                    eprintln!("searching without the cart: {e}");
                    None
                }
            };
            Ok(ShopReply::Page(Page { results: hits?.into_iter().map(|h| h.product).collect(), cart }))
        }
        ShopRequest::Add { sku, quantity } => {
            let found = ctx.call(CATALOG, CatalogRequest::Lookup { sku: sku.clone() }).await?;
            let Some(hit) = found.into_iter().next() else {
                return Err(mp::HandlerError::new(format!("no product '{sku}' in the catalog"))
                    .with_code(NOT_FOUND)
                    .with_data(json!({ "sku": sku })));
            };
            // The cart's own errors (a quantity it refuses) reach the shopper unchanged.
            Ok(ShopReply::Cart(ctx.call(CART, CartRequest::Add { product: hit.product, quantity }).await?))
        }
        ShopRequest::Cart {} => Ok(ShopReply::Cart(ctx.call(CART, CartRequest::View {}).await?)),
    }
}

/// The shop's two demo shoppers.
fn shoppers() -> mp::BasicAuth {
    mp::BasicAuth::from_pairs([("alice", "wonderland"), ("bob", "builder")])
}

fn services() -> Vec<mp::Service> {
    let catalog = mp::service(CATALOG, mp::scatter(CATALOG_LEAVES, search_leaf, top_hits));
    let cart = mp::service(CART, mp::shard_by_user(CART_SHARDS, mp::stateful_user(cart)));
    let frontend = mp::service("frontend", mp::spread(2, frontend))
        .calls(CART)
        .calls(CATALOG)
        // Every hop of a shopper's request, the calls included, gets at most this long.
        .timeout(Duration::from_secs(5))
        .expose()
        .with_basic_auth(shoppers());
    vec![frontend, cart, catalog]
}

fn main() -> mp::Result<()> {
    mp::serve(services())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp::client::{CallError, RpcClient};
    use serde_json::Value;

    struct Shop {
        app: mp::testing::TestApp,
        address: String,
    }

    impl Shop {
        async fn open() -> Self {
            let app = mp::testing::launch(services()).await.unwrap();
            let address = app.address("frontend").to_string();
            Shop { app, address }
        }

        fn shopper(&self, user: &str) -> RpcClient {
            let password = if user == "alice" { "wonderland" } else { "builder" };
            self.app.client_as(user, password)
        }

        async fn ask(&self, user: &str, request: Value) -> Result<ShopReply, CallError> {
            let answer = self.shopper(user).call(&self.address, "frontend", &request).await?;
            Ok(serde_json::from_value(answer).unwrap())
        }

        async fn page(&self, user: &str, query: &str) -> Page {
            match self.ask(user, json!({ "search": query })).await.unwrap() {
                ShopReply::Page(page) => page,
                other => panic!("not a page: {other:?}"),
            }
        }

        async fn cart(&self, user: &str, request: Value) -> Result<CartView, mp::RpcError> {
            match self.ask(user, request).await {
                Ok(ShopReply::Cart(cart)) => Ok(cart),
                Ok(other) => panic!("not a cart: {other:?}"),
                Err(CallError::Rpc(e)) => Err(e),
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn skus(products: &[Product]) -> Vec<&str> {
        products.iter().map(|p| p.sku.as_str()).collect()
    }

    #[tokio::test]
    async fn a_search_merges_the_best_hits_of_all_four_catalog_leaves() {
        let shop = Shop::open().await;
        // Oak products sit on leaves 1, 2 and 3; best score first, then the cheapest.
        let page = shop.page("alice", "oak").await;
        assert_eq!(skus(&page.results), ["clock-wall", "shelf-oak", "chair-oak", "desk-oak"]);
        // Nine products match: the one with two of the words first, then the cheapest; five in all.
        let page = shop.page("alice", "linen lamp oak").await;
        assert_eq!(skus(&page.results), ["lamp-floor", "notebook", "lamp-clip", "pillow-linen", "lamp-desk"]);
        assert_eq!(page.cart, Some(Summary { items: 0, total_cents: 0 }));
        assert!(shop.page("alice", "spaceship").await.results.is_empty());
    }

    #[tokio::test]
    async fn each_shopper_has_their_own_cart() {
        let shop = Shop::open().await;
        shop.cart("alice", json!({ "add": { "sku": "desk-oak", "quantity": 1 } })).await.unwrap();
        let alice =
            shop.cart("alice", json!({ "add": { "sku": "mug-stone", "quantity": 2 } })).await.unwrap();
        assert_eq!((alice.items, alice.total_cents), (3, 34900 + 2 * 1200));
        let bob = shop.cart("bob", json!({ "add": { "sku": "mug-stone", "quantity": 1 } })).await.unwrap();
        assert_eq!((bob.items, bob.total_cents), (1, 1200));
        assert_eq!(shop.cart("alice", json!({ "cart": {} })).await.unwrap(), alice);
        assert_eq!(shop.page("bob", "mug").await.cart, Some(Summary { items: 1, total_cents: 1200 }));
    }

    #[tokio::test]
    async fn an_unknown_product_or_a_refused_quantity_reaches_the_shopper_and_changes_nothing() {
        let shop = Shop::open().await;
        let err = shop.cart("alice", json!({ "add": { "sku": "yacht", "quantity": 1 } })).await.unwrap_err();
        assert_eq!((err.code, err.data), (NOT_FOUND, Some(json!({ "sku": "yacht" }))));
        // The cart refuses, and the frontend passes its error on as it came.
        let err =
            shop.cart("alice", json!({ "add": { "sku": "candle", "quantity": 100 } })).await.unwrap_err();
        assert_eq!(err.code, mp::RpcError::INVALID_PARAMS, "{err}");
        assert_eq!(err.data, Some(json!({ "sku": "candle", "in_basket": 0, "asked": 100 })));
        assert_eq!(shop.cart("alice", json!({ "cart": {} })).await.unwrap().items, 0);
    }

    #[tokio::test]
    async fn with_the_cart_down_a_search_still_answers_and_the_cart_is_minus_32000_naming_it() {
        let shop = Shop::open().await;
        shop.app.stop_replica("cart", 0);
        let page = shop.page("alice", "lamp").await;
        assert_eq!(page.results.len(), 3);
        assert_eq!(page.cart, None);
        let err = shop.cart("alice", json!({ "cart": {} })).await.unwrap_err();
        assert_eq!(err.code, mp::RpcError::UPSTREAM_UNAVAILABLE, "{err}");
        assert!(err.message.contains("'cart-0'"), "{err}");
    }

    #[tokio::test]
    async fn only_the_shops_shoppers_get_in() {
        let shop = Shop::open().await;
        for client in [RpcClient::new(), RpcClient::new().with_basic_auth("alice", "builder")] {
            let err = client.call(&shop.address, "frontend", &json!({ "cart": {} })).await.unwrap_err();
            assert!(matches!(err, CallError::Rpc(ref e) if e.code == mp::RpcError::UNAUTHORIZED), "{err}");
        }
    }

    #[test]
    fn the_plan_shows_who_calls_whom() {
        let plan = mp::plan::compile(&services()).unwrap();
        let text = plan.to_string();
        assert!(text.contains("frontend.replica") && text.contains("calls cart, catalog"), "{text}");
        assert_eq!(plan.process_count(), 1 + 2 + 1 + CART_SHARDS + 1 + CATALOG_LEAVES);
    }
}
